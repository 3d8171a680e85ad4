//! The X Activity API's subscription endpoints, `/2/activity/subscriptions`,
//! as X documents them (spec v2.167): one subscription per (event type,
//! filter), bearer auth, `additionalProperties: false` bodies, 1-1000 per
//! page, bulk delete of 1-100 ids with per-id errors.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::context::Sim;
use crate::http::auth::App;
use crate::http::error::{XApiError, XResult};
use crate::state::{ActivitySubscription, SUBSCRIPTION_LIMIT};

fn invalid(detail: impl Into<String>) -> XApiError {
    XApiError::invalid_request(detail)
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

/// Refuses a bad tag or webhook id.
fn check_tag_and_webhook(
    sim: &Sim,
    tag: &Option<String>,
    webhook_id: &Option<String>,
) -> Result<(), XApiError> {
    if tag
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.chars().count() > 200)
    {
        return Err(invalid("tag must be 1 to 200 characters"));
    }
    if let Some(id) = webhook_id {
        let digits = !id.is_empty() && id.len() <= 19 && id.bytes().all(|b| b.is_ascii_digit());
        if !digits || !sim.world().webhooks.contains_key(id) {
            return Err(XApiError::webhook_id_invalid());
        }
    }
    Ok(())
}

pub async fn create(State(sim): State<Sim>, _: App, body: String) -> XResult {
    let body: CreateBody =
        serde_json::from_str(&body).map_err(|e| invalid(format!("invalid body: {e}")))?;
    if !aaa_events::xaa::EVENT_TYPES.contains(&body.event_type.as_str()) {
        return Err(invalid(format!(
            "event_type `{}` is not supported",
            body.event_type
        )));
    }
    check_filter(&body.event_type, &body.filter).map_err(invalid)?;
    check_tag_and_webhook(&sim, &body.tag, &body.webhook_id)?;
    let now = sim.clock.now().to_rfc3339();
    let mut world = sim.world();
    if world
        .activity_subscriptions
        .iter()
        .any(|s| s.event_type == body.event_type && s.filter == body.filter)
    {
        return Err(XApiError::reason(
            StatusCode::CONFLICT,
            "DuplicateSubscriptionFailed",
            "A subscription for this event_type and filter already exists.",
        ));
    }
    if world.activity_subscriptions.len() >= SUBSCRIPTION_LIMIT {
        return Err(XApiError::reason(
            StatusCode::BAD_REQUEST,
            "SubscriptionLimitExceeded",
            "The subscription limit for this app has been reached.",
        ));
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
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"data": {"subscription": subscription}, "meta": {"total_subscriptions": total}}),
        ),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct Page {
    max_results: Option<String>,
    pagination_token: Option<String>,
}

pub async fn list(State(sim): State<Sim>, _: App, Query(page): Query<Page>) -> XResult {
    let max = match page.max_results.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(invalid("max_results must be between 1 and 1000")),
    };
    let start = match page.pagination_token.as_deref().map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Err(invalid("pagination_token is invalid")),
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
    Ok(Json(json!({"data": items, "meta": meta})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    tag: Option<String>,
    webhook_id: Option<String>,
}

pub async fn update(
    State(sim): State<Sim>,
    _: App,
    Path(id): Path<String>,
    body: String,
) -> XResult {
    let body: UpdateBody = serde_json::from_str(&body).map_err(|e| {
        invalid(format!(
            "invalid body (only tag and webhook_id can change): {e}"
        ))
    })?;
    check_tag_and_webhook(&sim, &body.tag, &body.webhook_id)?;
    let now = sim.clock.now().to_rfc3339();
    let mut world = sim.world();
    let Some(subscription) = world
        .activity_subscriptions
        .iter_mut()
        .find(|s| s.subscription_id == id)
    else {
        return Err(not_found(&id));
    };
    if body.tag.is_some() {
        subscription.tag = body.tag;
    }
    if body.webhook_id.is_some() {
        subscription.webhook_id = body.webhook_id;
    }
    subscription.updated_at = now;
    Ok(Json(json!({"data": {"subscription": subscription.clone()}})).into_response())
}

fn not_found(id: &str) -> XApiError {
    XApiError::reason(
        StatusCode::NOT_FOUND,
        "SubscriptionNotFound",
        format!("Subscription {id} was not found."),
    )
}

pub async fn delete_one(State(sim): State<Sim>, _: App, Path(id): Path<String>) -> XResult {
    let mut world = sim.world();
    let before = world.activity_subscriptions.len();
    world
        .activity_subscriptions
        .retain(|s| s.subscription_id != id);
    if world.activity_subscriptions.len() == before {
        return Err(not_found(&id));
    }
    let total = world.activity_subscriptions.len();
    Ok(
        Json(json!({"data": {"deleted": true}, "meta": {"total_subscriptions": total}}))
            .into_response(),
    )
}

#[derive(Deserialize)]
pub struct Ids {
    ids: Option<String>,
}

pub async fn delete_many(State(sim): State<Sim>, _: App, Query(ids): Query<Ids>) -> XResult {
    let ids: Vec<String> = ids
        .ids
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !(1..=100).contains(&ids.len()) {
        return Err(invalid("ids must name 1 to 100 subscriptions"));
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
    Ok(Json(body).into_response())
}
