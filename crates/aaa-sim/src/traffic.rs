//! Activity as X makes it: generated on a schedule or on demand, routed to
//! every webhook that should get it (per product and subscription), owed in
//! the ground truth, and handed to delivery.

use std::time::Duration;

use aaa_common::observe::InternalEvent;
use tokio_util::sync::CancellationToken;

use crate::context::Sim;
use crate::generate::Delivery;
use crate::state::Envelope;
use crate::{delivery, events, state, xaa};

/// One webhook a delivery goes to, in which envelope; `attempted` is
/// `false` when X owes it but does not attempt it (inside a cutover's gap).
struct Routed {
    webhook: String,
    envelope: Envelope,
    body: Vec<u8>,
    attempted: bool,
}

/// Where one delivery goes, in which envelope: AAA to every webhook the
/// account is subscribed on (revokes: where the actor is), XAA to the
/// webhook of every X Activity API subscription matching its event type and
/// filter, or, when `format` forces one, everything AAA-routed in that
/// envelope.
fn routes(
    world: &state::World,
    format: xaa::Format,
    delivery: &Delivery,
    actor: &String,
    activity_id: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Routed> {
    let owner = delivery.for_user_id.as_ref().unwrap_or(actor);
    let aaa_webhooks: Vec<String> = world
        .subscriptions
        .iter()
        .filter(|(_, users)| users.contains(owner))
        .map(|(id, _)| id.clone())
        .collect();
    // Opaque, stable per delivery, sometimes negative (as in X's examples).
    let uuid = (activity_id as i64).wrapping_mul(0x5851_F42D_4C95_7F2D);
    let xaa_body = || xaa::envelope(delivery, uuid);
    let to_all = |envelope: Envelope, body: Vec<u8>| -> Vec<Routed> {
        aaa_webhooks
            .iter()
            .map(|w| Routed {
                webhook: w.clone(),
                envelope,
                body: body.clone(),
                attempted: true,
            })
            .collect()
    };
    let aaa = || to_all(Envelope::Aaa, delivery.to_bytes());
    let xaa_forced = || to_all(Envelope::Xaa, xaa_body().to_string().into_bytes());
    match format {
        xaa::Format::Aaa => aaa(),
        xaa::Format::Xaa => xaa_forced(),
        xaa::Format::Both => {
            let mut routes = aaa();
            routes.extend(xaa_forced());
            routes
        }
        xaa::Format::Subscribed => {
            let mut routes = aaa();
            let body = xaa_body();
            let data = &body["data"];
            // One delivery per webhook, carrying the tag of the first
            // matching subscription (by id) there, as X puts the matched
            // subscription's tag on the event (none when it has none).
            let mut matched: Vec<(&String, &String, Option<&String>, bool)> = world
                .activity_subscriptions
                .iter()
                .filter(|s| {
                    s.event_type == data["event_type"]
                        && s.filter["user_id"] == data["filter"]["user_id"]
                        && (s.filter["direction"].is_null()
                            || s.filter["direction"] == data["filter"]["direction"])
                })
                .filter_map(|s| {
                    let webhook = s.webhook_id.as_ref()?;
                    let user = s.filter["user_id"].as_str().unwrap_or(owner);
                    let attempted = !world.in_cutover_gap(webhook, user, now);
                    world.webhooks.contains_key(webhook).then_some((
                        webhook,
                        &s.subscription_id,
                        s.tag.as_ref(),
                        attempted,
                    ))
                })
                .collect();
            matched.sort();
            matched.dedup_by(|a, b| a.0 == b.0);
            routes.extend(matched.into_iter().map(|(webhook, _, tag, attempted)| {
                let mut body = body.clone();
                match tag {
                    Some(tag) => body["data"]["tag"] = serde_json::json!(tag),
                    None => {
                        if let Some(data) = body["data"].as_object_mut() {
                            data.remove("tag");
                        }
                    }
                }
                Routed {
                    webhook: webhook.clone(),
                    envelope: Envelope::Xaa,
                    body: body.to_string().into_bytes(),
                    attempted,
                }
            }));
            routes
        }
    }
}

/// Generates `n` activities now and queues their deliveries; returns how
/// many deliveries were owed.
pub fn generate(sim: &Sim, n: usize) -> usize {
    let mut queued = Vec::new();
    let mut unattempted = Vec::new();
    {
        let now = sim.clock.now();
        let mut world = sim.world();
        world.apply_cutovers(now);
        // Computed once per call (100,000 accounts make it costly); revokes
        // below keep it current.
        let mut subscribed = world.subscribed_accounts();
        for _ in 0..n {
            let Some(activity) = world.generator.next_activity(&subscribed, now) else {
                break;
            };
            world.activities += 1;
            let activity_id = world.activities;
            events::ActivityGenerated {
                kind: activity.kind,
            }
            .emit();
            for delivery in &activity.deliveries {
                for routed in routes(
                    &world,
                    sim.args.format,
                    delivery,
                    &activity.actor,
                    activity_id,
                    now,
                ) {
                    let seq = world.owe(
                        activity_id,
                        &routed.webhook,
                        delivery.for_user_id.clone(),
                        delivery.kind,
                        activity.at,
                        routed.envelope,
                        routed.body,
                    );
                    if routed.attempted {
                        queued.push(seq);
                    } else {
                        unattempted.push(seq);
                    }
                }
            }
            if activity.kind == "user_event" {
                for users in world.subscriptions.values_mut() {
                    users.remove(&activity.actor);
                }
                // The app lost the account: its XAA subscriptions end too.
                world
                    .activity_subscriptions
                    .retain(|s| s.filter["user_id"].as_str() != Some(activity.actor.as_str()));
                subscribed.retain(|id| *id != activity.actor);
            }
        }
    }
    let owed = queued.len() + unattempted.len();
    for seq in unattempted {
        delivery::not_attempted(sim, seq, "migration_gap");
    }
    for seq in queued {
        delivery::spawn_live(sim.clone(), seq, 0);
    }
    owed
}

pub async fn generate_loop(sim: Sim, shutdown: CancellationToken) {
    if sim.args.rate <= 0.0 {
        return;
    }
    let tick = Duration::from_millis(100);
    let mut carry = 0.0;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let burst = if sim.chance(sim.args.burst_share) {
            10.0
        } else {
            1.0
        };
        carry += sim.args.rate * burst * tick.as_secs_f64();
        let n = carry.floor();
        carry -= n;
        if n >= 1.0 {
            generate(&sim, n as usize);
        }
    }
}

#[cfg(test)]
mod routing_tests {
    use super::*;
    use crate::generate::Generator;
    use crate::state::App;

    #[test]
    fn an_xaa_subscribed_revoke_goes_to_the_apps_subscription() {
        let now = chrono::Utc::now();
        let generator = Generator::new(1, 3, now);
        let app = App {
            app_id: "1".into(),
            consumer_key: "k".into(),
            consumer_secret: "s".into(),
            bearer_token: "b".into(),
        };
        let mut world = state::World::new(app, 3, 1, generator);
        world.add_webhook("http://x".into(), now);
        let webhook = world.webhooks.keys().next().cloned().unwrap();
        let users: Vec<String> = world.accounts.iter().map(|a| a.user_id.clone()).collect();
        world.subscribe_on_xaa(&webhook, &users, now);
        let actor = users[0].clone();
        let delivery = Delivery {
            for_user_id: None,
            kind: "user_event",
            body: serde_json::json!({"user_event": {"revoke": {"date_time": now.to_rfc3339(),
                "target": {"app_id": "1"}, "source": {"user_id": actor}}}}),
        };
        let routed = routes(&world, xaa::Format::Subscribed, &delivery, &actor, 1, now);
        assert_eq!(
            routed.len(),
            1,
            "{:?}",
            world
                .activity_subscriptions
                .iter()
                .filter(|s| s.event_type == "oauth.revoke")
                .collect::<Vec<_>>()
        );
    }
}
