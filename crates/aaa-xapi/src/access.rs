//! Which credential X accepts for an X Activity API subscription (pure).
//!
//! X's API reference for `POST /2/activity/subscriptions`: "OAuth2
//! user-context tokens must hold the scope matching the requested
//! event_type: dm.read for chat.* and dm.* events, like.read for like.*
//! events, mute.read for mute.* events, block.read for block.* events,
//! follows.read for subscriptions.* events, and tweet.read for all other
//! event types." X's quickstart: the app-only bearer token works for public
//! events only (profile updates, posts, broadcasts and the like), and
//! `mute.*` and `block.*` are actor-only: `filter.user_id` must be the
//! token's own user. docs/xaa.md keeps the sources.

use std::collections::BTreeSet;

/// The scope a refresh token needs: asked for with every authorization.
pub const OFFLINE_ACCESS: &str = "offline.access";

/// How X lets a subscription to one event type be created, updated or
/// deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The app's bearer token is enough (a user token works too, with
    /// `tweet.read`).
    Public,
    /// Only the filtered user's OAuth 2.0 token holding `scope`; with
    /// `actor_only`, `filter.user_id` must be that token's user.
    User {
        scope: &'static str,
        actor_only: bool,
    },
}

impl Access {
    /// The event type's rule. Types X adds later fall under "all other
    /// event types": public, `tweet.read` with a user token.
    pub fn of(event_type: &str) -> Access {
        let family = event_type.split('.').next().unwrap_or_default();
        let user = |scope, actor_only| Access::User { scope, actor_only };
        match family {
            "chat" | "dm" => user("dm.read", false),
            "like" => user("like.read", false),
            "mute" => user("mute.read", true),
            "block" => user("block.read", true),
            "subscriptions" => user("follows.read", false),
            _ => Access::Public,
        }
    }

    /// The scope a user-context token must hold for this type.
    pub fn scope(self) -> &'static str {
        match self {
            Access::Public => "tweet.read",
            Access::User { scope, .. } => scope,
        }
    }

    pub fn needs_user(self) -> bool {
        matches!(self, Access::User { .. })
    }
}

/// The scopes to ask an account for so that every one of `event_types` can
/// be subscribed with its token, plus [`OFFLINE_ACCESS`] (without it X
/// issues no refresh token and the access token dies after 2 hours), sorted.
pub fn scopes_for<'a>(event_types: impl IntoIterator<Item = &'a str>) -> Vec<&'static str> {
    let mut scopes: BTreeSet<&'static str> = event_types
        .into_iter()
        .map(|t| Access::of(t).scope())
        .collect();
    // Looking the user up (GET /2/users/me) needs it too.
    scopes.insert("users.read");
    scopes.insert("tweet.read");
    scopes.insert(OFFLINE_ACCESS);
    scopes.into_iter().collect()
}

/// Of `event_types`, those `granted` (a token's scopes) does not cover:
/// what subscribing with that token would be refused.
pub fn uncovered<'a>(
    event_types: impl IntoIterator<Item = &'a str>,
    granted: &[String],
) -> Vec<&'a str> {
    event_types
        .into_iter()
        .filter(|t| !granted.iter().any(|g| g == Access::of(t).scope()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// X's API reference for POST /2/activity/subscriptions, type by type
    /// (the expected scopes are X's sentence, not this module's table).
    #[test]
    fn every_event_type_needs_the_scope_x_names() {
        let expected = [
            ("chat.received", "dm.read"),
            ("chat.conversation.join", "dm.read"),
            ("dm.sent", "dm.read"),
            ("dm.read", "dm.read"),
            ("like.create", "like.read"),
            ("mute.mute", "mute.read"),
            ("mute.unmute", "mute.read"),
            ("block.block", "block.read"),
            ("block.unblock", "block.read"),
            ("subscriptions.subscribe", "follows.read"),
            ("subscriptions.unsubscribe", "follows.read"),
            ("post.create", "tweet.read"),
            ("post.delete", "tweet.read"),
            ("profile.update.bio", "tweet.read"),
            ("follow.follow", "tweet.read"),
            ("news.new", "tweet.read"),
            ("broadcast.start", "tweet.read"),
        ];
        for (event_type, scope) in expected {
            assert_eq!(Access::of(event_type).scope(), scope, "{event_type}");
        }
    }

    #[test]
    fn dms_likes_mutes_and_blocks_need_the_users_token_and_mutes_and_blocks_only_their_own() {
        for private in [
            "dm.received",
            "chat.sent",
            "like.create",
            "subscriptions.subscribe",
        ] {
            assert_eq!(
                Access::of(private),
                Access::User {
                    scope: Access::of(private).scope(),
                    actor_only: false
                },
                "{private}"
            );
        }
        for actor_only in ["mute.mute", "block.unblock"] {
            assert!(
                matches!(
                    Access::of(actor_only),
                    Access::User {
                        actor_only: true,
                        ..
                    }
                ),
                "{actor_only}"
            );
        }
        for public in [
            "profile.update.handle",
            "post.create",
            "post.delete",
            "broadcast.end",
        ] {
            assert_eq!(Access::of(public), Access::Public, "{public}");
        }
    }

    #[test]
    fn an_authorization_asks_for_every_scope_the_types_need_and_a_refresh_token() {
        assert_eq!(
            scopes_for(["like.create", "dm.sent", "dm.received", "post.create"]),
            [
                "dm.read",
                "like.read",
                "offline.access",
                "tweet.read",
                "users.read"
            ]
        );
    }

    #[test]
    fn a_token_without_a_scope_leaves_those_types_uncovered() {
        let granted = ["tweet.read".to_owned(), "like.read".to_owned()];
        assert_eq!(
            uncovered(
                ["post.create", "like.create", "dm.sent", "block.block"],
                &granted
            ),
            ["dm.sent", "block.block"]
        );
    }
}
