//! Seeded generation of deliveries: same seed, same stream, byte for byte.

use chrono::{DateTime, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// Every envelope key the generator produces; the last ones are kinds the
/// pipeline does not know, which must be kept, not dropped.
pub const KINDS: &[&str] = &[
    "tweet_create_events",
    "favorite_events",
    "follow_events",
    "unfollow_events",
    "block_events",
    "unblock_events",
    "mute_events",
    "unmute_events",
    "direct_message_events",
    "direct_message_indicate_typing_events",
    "direct_message_mark_read_events",
    "tweet_delete_events",
    "user_event",
    "spaces_events",
];

/// One delivery as X would send it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Subscribed account the delivery is for (`None` for revokes).
    pub for_user_id: Option<String>,
    pub kind: &'static str,
    pub body: Value,
}

impl Delivery {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.body.to_string().into_bytes()
    }
}

pub struct Generator {
    rng: ChaCha8Rng,
    accounts: Vec<String>,
    next_id: u64,
    clock_ms: i64,
}

impl Generator {
    /// `accounts` subscribed accounts (at least one), activity starting at `start`.
    pub fn new(seed: u64, accounts: usize, start: DateTime<Utc>) -> Self {
        let accounts = (0..accounts.max(1))
            .map(|i| (1_000_000_000_000_000_000u64 + i as u64 * 7919).to_string())
            .collect();
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            accounts,
            next_id: 1_500_000_000_000_000_000,
            clock_ms: start.timestamp_millis(),
        }
    }

    fn id(&mut self) -> String {
        self.next_id += self.rng.random_range(1..1_000_000);
        self.next_id.to_string()
    }

    fn account(&mut self) -> String {
        let i = self.rng.random_range(0..self.accounts.len());
        self.accounts[i].clone()
    }

    fn user(&mut self, id: &str) -> Value {
        json!({"id": id, "id_str": id, "screen_name": format!("user{}", &id[id.len() - 4..]),
               "name": format!("User {}", &id[id.len() - 4..]), "followers_count": self.rng.random_range(0..100_000)})
    }

    fn created_at(&self) -> String {
        Utc.timestamp_millis_opt(self.clock_ms)
            .single()
            .unwrap_or_default()
            .format("%a %b %d %H:%M:%S %z %Y")
            .to_string()
    }

    fn tweet(&mut self, author: &str) -> Value {
        let id = self.id();
        let longform = self.rng.random_bool(0.2);
        let text: String = format!("post {id} from {author}");
        let mut tweet = json!({
            "id": id.parse::<u64>().unwrap_or_default(), "id_str": id, "created_at": self.created_at(),
            "timestamp_ms": self.clock_ms.to_string(), "text": text, "truncated": longform,
            "user": self.user(author), "entities": {"hashtags": [], "user_mentions": [], "urls": []},
        });
        if longform {
            let full = format!("{text} {}", "and much more ".repeat(30));
            tweet["extended_tweet"] = json!({"full_text": full, "display_text_range": [0, full.len()],
                                             "entities": {"hashtags": [], "user_mentions": []}});
        }
        tweet
    }

    /// The next delivery.
    pub fn next_delivery(&mut self) -> Delivery {
        self.clock_ms += self.rng.random_range(10..2_000);
        let kind = KINDS[self.rng.random_range(0..KINDS.len())];
        let me = self.account();
        let other = (9_000_000_000u64 + self.rng.random_range(0..1_000_000u64)).to_string();
        let ts = self.clock_ms.to_string();
        let activity = match kind {
            "tweet_create_events" => self.tweet(&me),
            "favorite_events" => {
                let status = self.tweet(&me);
                json!({"id": format!("{:032x}", self.rng.random::<u128>()), "created_at": self.created_at(),
                       "timestamp_ms": self.clock_ms, "favorited_status": status, "user": self.user(&other)})
            }
            "follow_events" | "unfollow_events" | "block_events" | "unblock_events"
            | "mute_events" | "unmute_events" => {
                let verb = kind.trim_end_matches("_events");
                json!({"type": verb, "created_timestamp": ts, "source": self.user(&me), "target": self.user(&other)})
            }
            "direct_message_events" => json!({
                "type": "message_create", "id": self.id(), "created_timestamp": ts,
                "message_create": {"target": {"recipient_id": me}, "sender_id": other, "source_app_id": "268278",
                                   "message_data": {"text": "hello", "entities": {"hashtags": [], "urls": []}}}
            }),
            "direct_message_indicate_typing_events" => json!({
                "created_timestamp": ts, "sender_id": other, "target": {"recipient_id": me}
            }),
            "direct_message_mark_read_events" => json!({
                "created_timestamp": ts, "sender_id": other, "target": {"recipient_id": me},
                "last_read_event_id": self.id()
            }),
            "tweet_delete_events" => {
                json!({"status": {"id": self.id(), "user_id": me}, "timestamp_ms": ts})
            }
            "user_event" => {
                let date_time = Utc
                    .timestamp_millis_opt(self.clock_ms)
                    .single()
                    .unwrap_or_default()
                    .to_rfc3339();
                return Delivery {
                    for_user_id: None,
                    kind,
                    body: json!({"user_event": {"revoke": {"date_time": date_time,
                        "target": {"app_id": "13090192"}, "source": {"user_id": me}}}}),
                };
            }
            _ => json!({"space_id": self.id(), "state": "live", "created_at": self.created_at()}),
        };
        let mut body = json!({"for_user_id": me, kind: [activity]});
        if kind == "direct_message_events" {
            body["users"] = json!({ me.clone(): self.user(&me), other.clone(): self.user(&other) });
            body["apps"] =
                json!({"268278": {"id": "268278", "name": "Web App", "url": "https://x.com"}});
        }
        Delivery {
            for_user_id: Some(me),
            kind,
            body,
        }
    }

    pub fn take(&mut self, n: usize) -> Vec<Delivery> {
        (0..n).map(|_| self.next_delivery()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_764_000_000_000).unwrap()
    }

    #[test]
    fn same_seed_same_stream() {
        let a = Generator::new(7, 10, start()).take(200);
        let b = Generator::new(7, 10, start()).take(200);
        assert_eq!(a, b);
        let c = Generator::new(8, 10, start()).take(200);
        assert_ne!(a, c);
    }

    #[test]
    fn covers_every_kind() {
        let kinds: std::collections::BTreeSet<_> = Generator::new(1, 5, start())
            .take(1_000)
            .iter()
            .map(|d| d.kind)
            .collect();
        assert_eq!(kinds.len(), KINDS.len());
    }
}
