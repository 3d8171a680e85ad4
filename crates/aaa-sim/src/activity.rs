//! The X Activity API's subscription endpoints, `/2/activity/subscriptions`,
//! as X documents them (spec v2.167): one subscription per (event type,
//! filter), bearer auth, `additionalProperties: false` bodies, 1-1000 per
//! page, bulk delete of 1-100 ids with per-id errors.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Sim;
use crate::api::{bearer_ok, unauthorized, x_error};

/// X's limit for the self-serve tier.
pub const SUBSCRIPTION_LIMIT: usize = 1_500;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivitySubscription {
    pub subscription_id: String,
    pub event_type: String,
    pub filter: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

pub fn router() -> Router<Sim> {
    Router::new()
        .route(
            "/2/activity/subscriptions",
            get(list).post(create).delete(delete_many),
        )
        .route(
            "/2/activity/subscriptions/{id}",
            put(update).delete(delete_one),
        )
}

macro_rules! require_bearer {
    ($sim:expr, $headers:expr) => {
        if !bearer_ok(&$sim, &$headers) {
            return unauthorized();
        }
    };
}

fn invalid(detail: &str) -> Response {
    x_error(StatusCode::BAD_REQUEST, "InvalidRequest", detail)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    event_type: String,
    filter: Value,
    tag: Option<String>,
    webhook_id: Option<String>,
}

/// X's rules on the filter keys its spec names. Other keys are kept and
/// echoed as given (X adds filter keys over time: `qualifiers` came with
/// spec v2.168), never refused.
fn check_filter(event_type: &str, filter: &Value) -> Result<(), String> {
    let Some(object) = filter.as_object() else {
        return Err("filter must be an object".into());
    };
    if let Some(qualifiers) = object.get("qualifiers")
        && !qualifiers
            .as_object()
            .is_some_and(|q| q.values().all(Value::is_string))
    {
        return Err("filter.qualifiers must be an object of strings".into());
    }
    if let Some(direction) = object.get("direction") {
        if !matches!(direction.as_str(), Some("inbound" | "outbound")) {
            return Err("filter.direction must be inbound or outbound".into());
        }
        if event_type.starts_with("mute.") || event_type.starts_with("block.") {
            return Err(format!(
                "filter.direction is not supported for {event_type}"
            ));
        }
    }
    match event_type {
        "oauth.revoke" if !object.is_empty() => Err("oauth.revoke takes no filter".into()),
        "oauth.revoke" => Ok(()),
        "news.new" if object.get("keyword").and_then(Value::as_str).is_none() => {
            Err("news.new needs filter.keyword".into())
        }
        "news.new" => Ok(()),
        _ if object.get("user_id").and_then(Value::as_str).is_none() => {
            Err(format!("{event_type} needs filter.user_id"))
        }
        _ => Ok(()),
    }
}

/// The refusal for a bad tag or webhook id, if any.
fn check_tag_and_webhook(
    sim: &Sim,
    tag: &Option<String>,
    webhook_id: &Option<String>,
) -> Option<Response> {
    if tag
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.chars().count() > 200)
    {
        return Some(invalid("tag must be 1 to 200 characters"));
    }
    if let Some(id) = webhook_id {
        let digits = !id.is_empty() && id.len() <= 19 && id.bytes().all(|b| b.is_ascii_digit());
        if !digits || !sim.world().webhooks.contains_key(id) {
            return Some(x_error(
                StatusCode::BAD_REQUEST,
                "WebhookIdInvalid",
                "The provided webhook_id was not found or is not associated with the app.",
            ));
        }
    }
    None
}

/// Subscribes `users` on the X Activity API for everything their Account
/// Activity subscription delivered, to `webhook_id`, tagged
/// `aaa:<user>:<event_type>` (as `aaa subscriptions migrate` plans), plus
/// the app's `oauth.revoke`: what an operator's migration or X's managed
/// one leaves behind. What exists already is kept.
pub fn subscribe_accounts(
    world: &mut crate::state::World,
    webhook_id: &str,
    users: &[String],
    now: chrono::DateTime<chrono::Utc>,
) {
    let wanted = users
        .iter()
        .flat_map(|user| {
            aaa_events::xaa::account_event_types()
                .into_iter()
                .map(move |t| {
                    (
                        t,
                        serde_json::json!({"user_id": user}),
                        format!("aaa:{user}:{t}"),
                    )
                })
        })
        .chain(std::iter::once((
            "oauth.revoke",
            serde_json::json!({}),
            "aaa:revoke".to_owned(),
        )));
    for (event_type, filter, tag) in wanted {
        if world
            .activity_subscriptions
            .iter()
            .any(|s| s.event_type == event_type && s.filter == filter)
        {
            continue;
        }
        let id = world.next_activity_subscription.to_string();
        world.next_activity_subscription += 1;
        world.activity_subscriptions.push(ActivitySubscription {
            subscription_id: id,
            event_type: event_type.to_owned(),
            filter,
            tag: Some(tag),
            webhook_id: Some(webhook_id.to_owned()),
            created_at: now.to_rfc3339(),
            updated_at: now.to_rfc3339(),
        });
    }
}

async fn create(State(sim): State<Sim>, headers: HeaderMap, body: String) -> Response {
    require_bearer!(sim, headers);
    let body: CreateBody = match serde_json::from_str(&body) {
        Ok(body) => body,
        Err(e) => return invalid(&format!("invalid body: {e}")),
    };
    if !aaa_events::xaa::EVENT_TYPES.contains(&body.event_type.as_str()) {
        return invalid(&format!(
            "event_type `{}` is not supported",
            body.event_type
        ));
    }
    if let Err(detail) = check_filter(&body.event_type, &body.filter) {
        return invalid(&detail);
    }
    if let Some(response) = check_tag_and_webhook(&sim, &body.tag, &body.webhook_id) {
        return response;
    }
    let now = sim.clock.now().to_rfc3339();
    let mut world = sim.world();
    if world
        .activity_subscriptions
        .iter()
        .any(|s| s.event_type == body.event_type && s.filter == body.filter)
    {
        return x_error(
            StatusCode::CONFLICT,
            "DuplicateSubscriptionFailed",
            "A subscription for this event_type and filter already exists.",
        );
    }
    if world.activity_subscriptions.len() >= SUBSCRIPTION_LIMIT {
        return x_error(
            StatusCode::BAD_REQUEST,
            "SubscriptionLimitExceeded",
            "The subscription limit for this app has been reached.",
        );
    }
    let id = world.next_activity_subscription.to_string();
    world.next_activity_subscription += 1;
    let subscription = ActivitySubscription {
        subscription_id: id,
        event_type: body.event_type,
        filter: body.filter,
        tag: body.tag,
        webhook_id: body.webhook_id,
        created_at: now.clone(),
        updated_at: now,
    };
    world.activity_subscriptions.push(subscription.clone());
    let total = world.activity_subscriptions.len();
    (
        StatusCode::CREATED,
        Json(
            json!({"data": {"subscription": subscription}, "meta": {"total_subscriptions": total}}),
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Page {
    max_results: Option<String>,
    pagination_token: Option<String>,
}

async fn list(State(sim): State<Sim>, headers: HeaderMap, Query(page): Query<Page>) -> Response {
    require_bearer!(sim, headers);
    let max = match page.max_results.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return invalid("max_results must be between 1 and 1000"),
    };
    let start = match page.pagination_token.as_deref().map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return invalid("pagination_token is invalid"),
    };
    let world = sim.world();
    let total = world.activity_subscriptions.len();
    let max = max.min(sim.args.activity_page_limit.max(1));
    let items: Vec<&ActivitySubscription> = world
        .activity_subscriptions
        .iter()
        .skip(start)
        .take(max)
        .collect();
    let mut meta = json!({"result_count": items.len(), "total_subscriptions": total});
    if start + items.len() < total {
        meta["next_token"] = json!((start + items.len()).to_string());
    }
    Json(json!({"data": items, "meta": meta})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    tag: Option<String>,
    webhook_id: Option<String>,
}

async fn update(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: String,
) -> Response {
    require_bearer!(sim, headers);
    let body: UpdateBody = match serde_json::from_str(&body) {
        Ok(body) => body,
        Err(e) => {
            return invalid(&format!(
                "invalid body (only tag and webhook_id can change): {e}"
            ));
        }
    };
    if let Some(response) = check_tag_and_webhook(&sim, &body.tag, &body.webhook_id) {
        return response;
    }
    let now = sim.clock.now().to_rfc3339();
    let mut world = sim.world();
    let Some(subscription) = world
        .activity_subscriptions
        .iter_mut()
        .find(|s| s.subscription_id == id)
    else {
        return not_found(&id);
    };
    if body.tag.is_some() {
        subscription.tag = body.tag;
    }
    if body.webhook_id.is_some() {
        subscription.webhook_id = body.webhook_id;
    }
    subscription.updated_at = now;
    Json(json!({"data": {"subscription": subscription.clone()}})).into_response()
}

fn not_found(id: &str) -> Response {
    x_error(
        StatusCode::NOT_FOUND,
        "SubscriptionNotFound",
        &format!("Subscription {id} was not found."),
    )
}

async fn delete_one(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    require_bearer!(sim, headers);
    let mut world = sim.world();
    let before = world.activity_subscriptions.len();
    world
        .activity_subscriptions
        .retain(|s| s.subscription_id != id);
    if world.activity_subscriptions.len() == before {
        return not_found(&id);
    }
    let total = world.activity_subscriptions.len();
    Json(json!({"data": {"deleted": true}, "meta": {"total_subscriptions": total}})).into_response()
}

#[derive(Deserialize)]
struct Ids {
    ids: Option<String>,
}

async fn delete_many(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(ids): Query<Ids>,
) -> Response {
    require_bearer!(sim, headers);
    let ids: Vec<String> = ids
        .ids
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !(1..=100).contains(&ids.len()) {
        return invalid("ids must name 1 to 100 subscriptions");
    }
    let mut world = sim.world();
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for id in ids {
        let before = world.activity_subscriptions.len();
        world
            .activity_subscriptions
            .retain(|s| s.subscription_id != id);
        if world.activity_subscriptions.len() < before {
            deleted.push(id);
        } else {
            errors.push(
                json!({"subscription_id": id, "reason": "SubscriptionNotFound",
                               "message": format!("Subscription {id} was not found.")}),
            );
        }
    }
    let total = world.activity_subscriptions.len();
    // X's schema: one item per deleted id (xdk parses nothing else).
    let data: Vec<Value> = deleted
        .iter()
        .map(|id| json!({"subscription_id": id, "deleted": true}))
        .collect();
    let mut body = json!({"data": data, "meta": {"total_subscriptions": total}});
    if !errors.is_empty() {
        body["errors"] = json!(errors);
    }
    Json(body).into_response()
}
