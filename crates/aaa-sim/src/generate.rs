//! Seeded generation of realistic activity: same seed and same sequence of
//! "now"s, same stream, byte for byte.
//!
//! An activity between two subscribed accounts is owed once per account (one
//! delivery per `for_user_id`), as X does.

use chrono::{DateTime, TimeZone, Utc};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// Every envelope key the generator produces, with its default weight. The
/// last is a kind the pipeline does not know, which must be kept, not dropped.
pub const KINDS: &[(&str, f64)] = &[
    ("tweet_create_events", 30.0),
    ("favorite_events", 18.0),
    ("follow_events", 7.0),
    ("unfollow_events", 3.0),
    ("block_events", 1.5),
    ("unblock_events", 1.0),
    ("mute_events", 1.5),
    ("unmute_events", 1.0),
    ("direct_message_events", 12.0),
    ("direct_message_indicate_typing_events", 7.0),
    ("direct_message_mark_read_events", 7.0),
    ("tweet_delete_events", 3.0),
    ("user_event", 0.5),
    ("spaces_events", 2.0),
];

/// Id of the `i`-th simulated account.
pub fn account_id(i: usize) -> String {
    (1_000_000_000_000_000_000u64 + i as u64 * 7919).to_string()
}

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

/// One activity and every delivery it is owed as.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    pub kind: &'static str,
    /// The subscribed account that acted (for a revoke: the one revoking).
    pub actor: String,
    /// When it happened (strictly increasing across the stream).
    pub at: DateTime<Utc>,
    pub deliveries: Vec<Delivery>,
}

/// Generator knobs.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Share of activities of kinds the pipeline does not know (0..1).
    pub unknown_share: f64,
    /// Chance that the other party of an interaction is also subscribed.
    pub interaction_share: f64,
    /// Share of subscription revokes (0..1); each ends a subscription.
    pub revoke_share: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            unknown_share: 0.02,
            interaction_share: 0.3,
            revoke_share: 0.005,
        }
    }
}

pub struct Generator {
    rng: ChaCha8Rng,
    kinds: WeightedIndex<f64>,
    mix: Mix,
    /// Accounts used by [`Generator::take`].
    accounts: Vec<String>,
    next_id: u64,
    clock_ms: i64,
    last_ms: i64,
    /// Posts created lately (newest last): likes embed them, deletions
    /// delete them, so deleted posts have copies in other accounts' events
    /// (what the compliance erase must find).
    recent_posts: std::collections::VecDeque<Value>,
}

/// Posts kept for later likes and deletions.
const RECENT_POSTS: usize = 64;

impl Generator {
    /// `accounts` subscribed accounts (at least one) for [`Generator::take`],
    /// which starts its own clock at `start`.
    pub fn new(seed: u64, accounts: usize, start: DateTime<Utc>) -> Self {
        Self::with_mix(seed, accounts, start, Mix::default())
    }

    pub fn with_mix(seed: u64, accounts: usize, start: DateTime<Utc>, mix: Mix) -> Self {
        let known_total: f64 = KINDS
            .iter()
            .filter(|(k, _)| !matches!(*k, "spaces_events" | "user_event"))
            .map(|(_, w)| w)
            .sum();
        let weights = KINDS.iter().map(|(kind, weight)| match *kind {
            // Shares given as fractions of everything.
            "spaces_events" => {
                known_total * mix.unknown_share
                    / (1.0 - mix.unknown_share - mix.revoke_share).max(0.01)
            }
            "user_event" => {
                known_total * mix.revoke_share
                    / (1.0 - mix.unknown_share - mix.revoke_share).max(0.01)
            }
            _ => *weight,
        });
        let kinds = WeightedIndex::new(weights.map(|w| w.max(0.0))).unwrap_or_else(|_| {
            WeightedIndex::new(KINDS.iter().map(|(_, w)| *w)).expect("static weights are valid")
        });
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            kinds,
            mix,
            accounts: (0..accounts.max(1)).map(account_id).collect(),
            next_id: 1_500_000_000_000_000_000,
            clock_ms: start.timestamp_millis(),
            last_ms: i64::MIN,
            recent_posts: Default::default(),
        }
    }

    fn id(&mut self) -> String {
        self.next_id += self.rng.random_range(1..1_000_000);
        self.next_id.to_string()
    }

    fn user(&mut self, id: &str) -> Value {
        let tail = &id[id.len().saturating_sub(4)..];
        json!({"id": id.parse::<u64>().unwrap_or_default(), "id_str": id, "screen_name": format!("user{tail}"),
               "name": format!("User {tail}"), "followers_count": self.rng.random_range(0..100_000),
               "verified": false, "protected": false})
    }

    fn created_at(ms: i64) -> String {
        Utc.timestamp_millis_opt(ms)
            .single()
            .unwrap_or_default()
            .format("%a %b %d %H:%M:%S %z %Y")
            .to_string()
    }

    fn tweet(&mut self, author: &str, ms: i64) -> Value {
        let id = self.id();
        let longform = self.rng.random_bool(0.15);
        let text = format!("post {id} from {author}");
        let mut tweet = json!({
            "id": id.parse::<u64>().unwrap_or_default(), "id_str": id, "created_at": Self::created_at(ms),
            "timestamp_ms": ms.to_string(), "text": text, "truncated": longform, "source": "<a href=\"https://x.com\">X Web App</a>",
            "user": self.user(author), "is_quote_status": false,
            "entities": {"hashtags": [], "user_mentions": [], "urls": [], "symbols": []},
        });
        if longform {
            let full = format!(
                "{text} {}#longform",
                "and then much more to say ".repeat(14)
            );
            let len = full.chars().count();
            tweet["text"] = json!(full.chars().take(140).collect::<String>());
            tweet["extended_tweet"] = json!({"full_text": full, "display_text_range": [0, len],
                "entities": {"hashtags": [{"text": "longform", "indices": [len - 9, len]}], "user_mentions": [], "urls": []}});
        }
        tweet
    }

    /// A post by `author` in one of X's shapes: original, reply, retweet,
    /// quote, retweet of a quote, or mentioning `other`.
    fn post_variant(&mut self, author: &str, other: &str, ms: i64) -> (Value, bool) {
        let mut tweet = self.tweet(author, ms);
        let mentions_other = match self.rng.random_range(0..6) {
            1 => {
                tweet["in_reply_to_status_id_str"] = json!(self.id());
                tweet["in_reply_to_user_id_str"] = json!(other);
                false
            }
            2 => {
                tweet["retweeted_status"] = self.tweet(other, ms - 60_000);
                false
            }
            3 => {
                tweet["is_quote_status"] = json!(true);
                tweet["quoted_status"] = self.tweet(other, ms - 120_000);
                false
            }
            4 => {
                let mut quote = self.tweet(other, ms - 60_000);
                quote["is_quote_status"] = json!(true);
                quote["quoted_status"] = self.tweet(author, ms - 180_000);
                tweet["retweeted_status"] = quote;
                false
            }
            5 => {
                let tail = &other[other.len().saturating_sub(4)..];
                tweet["text"] = json!(format!(
                    "@user{tail} {}",
                    tweet["text"].as_str().unwrap_or_default()
                ));
                tweet["entities"]["user_mentions"] = json!([{"id_str": other, "screen_name": format!("user{tail}"), "indices": [0, 9]}]);
                true
            }
            _ => false,
        };
        (tweet, mentions_other)
    }

    /// The next activity among `subscribed` accounts, at `now`. `None` when
    /// nobody is subscribed: X generates nothing for an app without users.
    pub fn next_activity(&mut self, subscribed: &[String], now: DateTime<Utc>) -> Option<Activity> {
        if subscribed.is_empty() {
            return None;
        }
        // Strictly increasing event times: two activities never share a
        // millisecond, so keys derived from time never collide by accident.
        let ms = now.timestamp_millis().max(self.last_ms + 1);
        self.last_ms = ms;
        let kind = KINDS[self.kinds.sample(&mut self.rng)].0;
        let me = subscribed[self.rng.random_range(0..subscribed.len())].clone();
        let other_subscribed =
            subscribed.len() > 1 && self.rng.random_bool(self.mix.interaction_share);
        let other = if other_subscribed {
            loop {
                let pick = &subscribed[self.rng.random_range(0..subscribed.len())];
                if *pick != me {
                    break pick.clone();
                }
            }
        } else {
            (9_000_000_000u64 + self.rng.random_range(0..1_000_000u64)).to_string()
        };
        let ts = ms.to_string();
        // (activity item, also owed to `other`?)
        let (item, shared) = match kind {
            "tweet_create_events" => {
                let (tweet, mentions) = self.post_variant(&me, &other, ms);
                if self.recent_posts.len() == RECENT_POSTS {
                    self.recent_posts.pop_front();
                }
                self.recent_posts.push_back(tweet.clone());
                (tweet, mentions && other_subscribed)
            }
            "favorite_events" => {
                // Half the likes are of a post made lately.
                let recent = (!self.recent_posts.is_empty() && self.rng.random_bool(0.5))
                    .then(|| self.rng.random_range(0..self.recent_posts.len()))
                    .and_then(|i| self.recent_posts.get(i).cloned());
                let status = match recent {
                    Some(post) => post,
                    None => self.tweet(&other, ms - 300_000),
                };
                let liker = self.user(&me);
                (
                    json!({"id": format!("{:032x}", self.rng.random::<u128>()), "created_at": Self::created_at(ms),
                        "timestamp_ms": ms, "favorited_status": status, "user": liker}),
                    other_subscribed,
                )
            }
            "follow_events" | "unfollow_events" | "block_events" | "unblock_events"
            | "mute_events" | "unmute_events" => {
                let verb = kind.trim_end_matches("_events");
                // Blocks and mutes are only ever delivered to the actor.
                let shared = other_subscribed && matches!(verb, "follow" | "unfollow");
                (
                    json!({"type": verb, "created_timestamp": ts, "source": self.user(&me), "target": self.user(&other)}),
                    shared,
                )
            }
            "direct_message_events" => (
                json!({"type": "message_create", "id": self.id(), "created_timestamp": ts,
                       "message_create": {"target": {"recipient_id": other}, "sender_id": me, "source_app_id": "268278",
                                          "message_data": {"text": "hello there", "entities": {"hashtags": [], "symbols": [], "user_mentions": [], "urls": []}}}}),
                other_subscribed,
            ),
            "direct_message_indicate_typing_events" => (
                json!({"created_timestamp": ts, "sender_id": other, "target": {"recipient_id": me}}),
                false,
            ),
            "direct_message_mark_read_events" => (
                json!({"created_timestamp": ts, "sender_id": other, "target": {"recipient_id": me}, "last_read_event_id": self.id()}),
                false,
            ),
            "tweet_delete_events" => {
                // One of `me`'s recent posts if there is one (its likes and
                // retweets hold copies), else a post from before.
                let own = self
                    .recent_posts
                    .iter()
                    .position(|post| post["user"]["id_str"] == json!(me));
                let id = match own.and_then(|i| self.recent_posts.remove(i)) {
                    Some(post) => post["id_str"].as_str().unwrap_or_default().to_owned(),
                    None => self.id(),
                };
                (
                    json!({"status": {"id": id, "user_id": me}, "timestamp_ms": ts}),
                    false,
                )
            }
            "user_event" => {
                let date_time = Utc
                    .timestamp_millis_opt(ms)
                    .single()
                    .unwrap_or_default()
                    .to_rfc3339();
                let body = json!({"user_event": {"revoke": {"date_time": date_time,
                    "target": {"app_id": "13090192"}, "source": {"user_id": me}}}});
                let at = Utc.timestamp_millis_opt(ms).single().unwrap_or(now);
                return Some(Activity {
                    kind,
                    actor: me,
                    at,
                    deliveries: vec![Delivery {
                        for_user_id: None,
                        kind,
                        body,
                    }],
                });
            }
            _ => (
                json!({"space_id": self.id(), "state": "live", "creator_id": me, "created_at": Self::created_at(ms)}),
                false,
            ),
        };
        let mut recipients = vec![me.clone()];
        if shared {
            recipients.push(other.clone());
        }
        let deliveries = recipients
            .into_iter()
            .map(|for_user_id| {
                let mut body = json!({"for_user_id": for_user_id, kind: [item.clone()]});
                if kind == "tweet_create_events" && for_user_id != me {
                    // The mentioned account's copy says whether it blocks the author
                    // (v1.1 and v2 spellings).
                    let blocked = self.rng.random_bool(0.1);
                    body["user_has_blocked"] = json!(blocked);
                    body["is_blocked_by"] = json!(blocked);
                }
                if kind == "direct_message_events" {
                    body["users"] = json!({ me.clone(): self.user(&me), other.clone(): self.user(&other) });
                    body["apps"] = json!({"268278": {"id": "268278", "name": "X Web App", "url": "https://x.com"}});
                }
                Delivery { for_user_id: Some(for_user_id), kind, body }
            })
            .collect();
        let at = Utc.timestamp_millis_opt(ms).single().unwrap_or(now);
        Some(Activity {
            kind,
            actor: me,
            at,
            deliveries,
        })
    }

    /// `n` deliveries among this generator's own accounts, on its own clock.
    pub fn take(&mut self, n: usize) -> Vec<Delivery> {
        let accounts = self.accounts.clone();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            self.clock_ms += self.rng.random_range(10..2_000);
            let now = Utc
                .timestamp_millis_opt(self.clock_ms)
                .single()
                .unwrap_or_default();
            if let Some(activity) = self.next_activity(&accounts, now) {
                out.extend(activity.deliveries);
            }
        }
        out.truncate(n);
        out
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
        let a = Generator::new(7, 10, start()).take(300);
        let b = Generator::new(7, 10, start()).take(300);
        assert_eq!(a, b);
        let c = Generator::new(8, 10, start()).take(300);
        assert_ne!(a, c);
    }

    #[test]
    fn covers_every_kind_and_shape() {
        let stream = Generator::new(1, 5, start()).take(3_000);
        let kinds: std::collections::BTreeSet<_> = stream.iter().map(|d| d.kind).collect();
        assert_eq!(kinds.len(), KINDS.len());
        let tweets: Vec<&Value> = stream
            .iter()
            .filter(|d| d.kind == "tweet_create_events")
            .map(|d| &d.body["tweet_create_events"][0])
            .collect();
        for shape in [
            "extended_tweet",
            "retweeted_status",
            "quoted_status",
            "in_reply_to_status_id_str",
        ] {
            assert!(
                tweets.iter().any(|t| t.get(shape).is_some()),
                "no tweet with {shape}"
            );
        }
        assert!(
            stream.iter().any(|d| d.body.get("is_blocked_by").is_some()),
            "no mention copy with the block flag"
        );
        assert!(
            stream
                .iter()
                .any(|d| d.body.get("users").is_some() && d.body.get("apps").is_some())
        );
    }

    #[test]
    fn interactions_between_subscribed_accounts_are_owed_to_both() {
        let accounts: Vec<String> = (0..2).map(account_id).collect();
        let mut generator = Generator::with_mix(
            3,
            2,
            start(),
            Mix {
                interaction_share: 1.0,
                ..Mix::default()
            },
        );
        let shared = (0..500)
            .filter_map(|i| {
                generator.next_activity(&accounts, start() + chrono::TimeDelta::seconds(i))
            })
            .find(|a| a.kind == "follow_events")
            .expect("a follow");
        let owed: Vec<_> = shared
            .deliveries
            .iter()
            .map(|d| d.for_user_id.clone().unwrap())
            .collect();
        assert_eq!(owed.len(), 2);
        assert_ne!(owed[0], owed[1]);
        assert!(owed.iter().all(|id| accounts.contains(id)));
        assert_eq!(
            shared.deliveries[0].body["follow_events"],
            shared.deliveries[1].body["follow_events"]
        );
    }

    #[test]
    fn nobody_subscribed_means_no_activity() {
        assert_eq!(
            Generator::new(1, 1, start()).next_activity(&[], start()),
            None
        );
    }
}
