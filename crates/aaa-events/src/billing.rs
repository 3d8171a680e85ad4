//! What X bills: since X moved to pay-per-use, every event it delivers is
//! charged by event type (deletes and the DM sender's own events are free),
//! and X charges an event once per UTC day however often it delivers it.
//! This module names the billed type of a stored event, whichever envelope
//! carried it, and holds the default prices; the consumer counts, the
//! watermark prices (`v_x_charges_daily`).

use serde_json::Value;

/// X's event type for a stored event: the XAA `event_type` it came with,
/// or the one an Account Activity delivery of the same activity would be
/// billed as under the X Activity API.
pub fn billed_type(
    kind: &str,
    context: &Value,
    payload: &Value,
    for_user_id: Option<&str>,
) -> String {
    if let Some(event_type) = context
        .get("xaa")
        .and_then(|x| x.get("event_type"))
        .and_then(Value::as_str)
    {
        return event_type.to_owned();
    }
    let action = |on: &str, off: &str, family: &str| {
        let undone = payload.get("type").and_then(Value::as_str) == Some(off);
        format!("{family}.{}", if undone { off } else { on })
    };
    match kind {
        "tweet_create_events" => "post.create".into(),
        "tweet_delete_events" => "post.delete".into(),
        "favorite_events" => "like.create".into(),
        "follow_events" => action("follow", "unfollow", "follow"),
        "block_events" => action("block", "unblock", "block"),
        "mute_events" => action("mute", "unmute", "mute"),
        "direct_message_events" => {
            let sender = payload.pointer("/message_create/sender_id").and_then(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .or_else(|| s.as_u64().map(|n| n.to_string()))
            });
            if sender.is_some() && sender.as_deref() == for_user_id {
                "dm.sent".into()
            } else {
                "dm.received".into()
            }
        }
        "direct_message_indicate_typing_events" => "dm.indicate_typing".into(),
        "direct_message_mark_read_events" => "dm.read".into(),
        "user_event" => "oauth.revoke".into(),
        other => other.to_owned(),
    }
}

/// X's published prices in US dollars per event (pay-per-use, 2026), the
/// defaults of `AAA_X_PRICES`. Types not listed are not priced (shown, at 0).
pub const DEFAULT_PRICES: &[(&str, f64)] = &[
    ("post.create", 0.005),
    ("post.mention.create", 0.005),
    ("post.reply.create", 0.005),
    ("post.quote.create", 0.005),
    ("post.repost.create", 0.005),
    ("like.create", 0.001),
    ("follow.follow", 0.01),
    ("follow.unfollow", 0.01),
    ("dm.received", 0.01),
    ("chat.received", 0.01),
    ("post.delete", 0.0),
    ("dm.sent", 0.0),
    ("dm.read", 0.0),
    ("dm.indicate_typing", 0.0),
];

/// Prices wrong in `AAA_X_PRICES`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{0}` is not EVENT_TYPE=USD with USD a non-negative number")]
pub struct PriceError(pub String);

/// The defaults, with `overrides` (`post.create=0.004,like.create=0`)
/// replacing or adding prices.
pub fn prices(overrides: &str) -> Result<Vec<(String, f64)>, PriceError> {
    let mut prices: std::collections::BTreeMap<String, f64> = DEFAULT_PRICES
        .iter()
        .map(|(t, p)| ((*t).to_owned(), *p))
        .collect();
    for entry in overrides
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (event_type, usd) = entry
            .split_once('=')
            .ok_or_else(|| PriceError(entry.to_owned()))?;
        let usd: f64 = usd
            .trim()
            .parse()
            .ok()
            .filter(|p: &f64| p.is_finite() && *p >= 0.0)
            .ok_or_else(|| PriceError(entry.to_owned()))?;
        if event_type.trim().is_empty() {
            return Err(PriceError(entry.to_owned()));
        }
        prices.insert(event_type.trim().to_owned(), usd);
    }
    Ok(prices.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_xaa_event_is_billed_as_its_own_type() {
        let context = json!({"xaa": {"event_type": "post.quote.create"}});
        assert_eq!(
            billed_type("tweet_create_events", &context, &json!({}), Some("1")),
            "post.quote.create"
        );
    }

    #[test]
    fn an_aaa_event_is_billed_as_its_xaa_counterpart() {
        let none = json!({});
        assert_eq!(
            billed_type("tweet_create_events", &none, &none, Some("1")),
            "post.create"
        );
        assert_eq!(
            billed_type("favorite_events", &none, &none, Some("1")),
            "like.create"
        );
        assert_eq!(
            billed_type(
                "follow_events",
                &none,
                &json!({"type": "unfollow"}),
                Some("1")
            ),
            "follow.unfollow"
        );
        assert_eq!(
            billed_type(
                "follow_events",
                &none,
                &json!({"type": "follow"}),
                Some("1")
            ),
            "follow.follow"
        );
        assert_eq!(
            billed_type("block_events", &none, &json!({"type": "unblock"}), None),
            "block.unblock"
        );
        assert_eq!(
            billed_type("tweet_delete_events", &none, &none, None),
            "post.delete"
        );
        assert_eq!(
            billed_type("user_event", &none, &none, None),
            "oauth.revoke"
        );
        assert_eq!(
            billed_type("spaces_events", &none, &none, None),
            "spaces_events"
        );
    }

    #[test]
    fn a_dm_is_sent_by_the_account_and_received_otherwise() {
        let none = json!({});
        let dm = |sender: Value| json!({"type": "message_create", "message_create": {"sender_id": sender}});
        assert_eq!(
            billed_type("direct_message_events", &none, &dm(json!("1")), Some("1")),
            "dm.sent"
        );
        assert_eq!(
            billed_type("direct_message_events", &none, &dm(json!(1)), Some("1")),
            "dm.sent"
        );
        assert_eq!(
            billed_type("direct_message_events", &none, &dm(json!("2")), Some("1")),
            "dm.received"
        );
        assert_eq!(
            billed_type("direct_message_events", &none, &none, None),
            "dm.received"
        );
    }

    #[test]
    fn prices_are_the_defaults_with_overrides() {
        let p = prices("post.create=0.004, news.new=0.02").unwrap();
        let of = |t: &str| p.iter().find(|(e, _)| e == t).map(|(_, u)| *u);
        assert_eq!(of("post.create"), Some(0.004));
        assert_eq!(of("news.new"), Some(0.02));
        assert_eq!(of("like.create"), Some(0.001));
        assert_eq!(of("dm.sent"), Some(0.0));
        assert_eq!(prices("").unwrap().len(), DEFAULT_PRICES.len());
        for bad in [
            "post.create",
            "post.create=-1",
            "=0.1",
            "like.create=cheap",
            "x=NaN",
        ] {
            assert_eq!(prices(bad), Err(PriceError(bad.trim().to_owned())), "{bad}");
        }
    }
}
