use std::fmt;

/// Every activity key X documents, plus a catch-all that keeps new kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ActivityKind {
    TweetCreate,
    Favorite,
    Follow,
    Unfollow,
    Block,
    Unblock,
    Mute,
    Unmute,
    DirectMessage,
    DirectMessageTyping,
    DirectMessageMarkRead,
    TweetDelete,
    UserEvent,
    ReplayJobStatus,
    /// A key X sends that this build does not know; stored as `unknown:<key>`.
    Unknown(String),
    /// An X Activity API event type with no Account Activity equivalent
    /// (profile updates, chat, news, spaces, broadcasts); stored as
    /// `xaa:<event_type>`.
    Xaa(String),
}

/// Top-level keys that describe the delivery rather than being an activity.
pub(crate) const CONTEXT_KEYS: &[&str] = &[
    "for_user_id",
    "users",
    "apps",
    "user_has_blocked",
    "is_blocked_by",
];

impl ActivityKind {
    /// The kind named by an envelope key, `None` for context keys.
    pub fn from_envelope_key(key: &str) -> Option<ActivityKind> {
        use ActivityKind::*;
        Some(match key {
            "tweet_create_events" => TweetCreate,
            "favorite_events" => Favorite,
            "follow_events" => Follow,
            "unfollow_events" => Unfollow,
            "block_events" => Block,
            "unblock_events" => Unblock,
            "mute_events" => Mute,
            "unmute_events" => Unmute,
            "direct_message_events" => DirectMessage,
            "direct_message_indicate_typing_events" => DirectMessageTyping,
            "direct_message_mark_read_events" => DirectMessageMarkRead,
            "tweet_delete_events" => TweetDelete,
            "user_event" => UserEvent,
            "replay_job_status" => ReplayJobStatus,
            k if CONTEXT_KEYS.contains(&k) => return None,
            other => Unknown(other.to_owned()),
        })
    }

    /// X's own envelope key for known kinds, so rows match X's documentation;
    /// `"unknown"` for the rest. Bounded, so it doubles as a metric label. The
    /// stored kind is the [`Display`](fmt::Display) form, which keeps the key.
    pub fn as_str(&self) -> &'static str {
        use ActivityKind::*;
        match self {
            TweetCreate => "tweet_create_events",
            Favorite => "favorite_events",
            Follow => "follow_events",
            Unfollow => "unfollow_events",
            Block => "block_events",
            Unblock => "unblock_events",
            Mute => "mute_events",
            Unmute => "unmute_events",
            DirectMessage => "direct_message_events",
            DirectMessageTyping => "direct_message_indicate_typing_events",
            DirectMessageMarkRead => "direct_message_mark_read_events",
            TweetDelete => "tweet_delete_events",
            UserEvent => "user_event",
            ReplayJobStatus => "replay_job_status",
            Unknown(_) => "unknown",
            Xaa(_) => "xaa",
        }
    }

    /// Every kind this build knows, in documentation order.
    pub fn known() -> impl Iterator<Item = ActivityKind> {
        KNOWN_LABELS
            .iter()
            .filter_map(|key| ActivityKind::from_envelope_key(key))
    }
}

const KNOWN_LABELS: &[&str] = &[
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
    "replay_job_status",
];

impl fmt::Display for ActivityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivityKind::Unknown(key) => write!(f, "unknown:{key}"),
            ActivityKind::Xaa(event_type) => write!(f, "xaa:{event_type}"),
            known => f.write_str(known.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_kind_round_trips_through_its_key() {
        let kinds: Vec<_> = ActivityKind::known().collect();
        assert_eq!(kinds.len(), KNOWN_LABELS.len());
        for kind in kinds {
            assert_eq!(
                ActivityKind::from_envelope_key(kind.as_str()),
                Some(kind.clone())
            );
            assert_eq!(kind.to_string(), kind.as_str());
            assert!(!matches!(kind, ActivityKind::Unknown(_)));
        }
    }

    #[test]
    fn unknown_keys_are_kept_and_context_keys_are_not_kinds() {
        let spaces = ActivityKind::from_envelope_key("spaces_events").unwrap();
        assert_eq!(spaces.to_string(), "unknown:spaces_events");
        assert_eq!(spaces.as_str(), "unknown");
        for key in CONTEXT_KEYS {
            assert_eq!(ActivityKind::from_envelope_key(key), None);
        }
    }
}
