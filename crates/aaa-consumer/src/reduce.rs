//! What a batch's new events write, reduced in Rust first (pure, no I/O):
//! one `INSERT … ON CONFLICT DO UPDATE` may not touch a row twice, so rows
//! that are state (users, posts, apps, revocations) become one per key, and
//! every row keeps the event it came from.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use aaa_events::Record;
use aaa_events::normalize::{
    AppRow, DeletionRow, DirectMessageRow, FavoriteRow, MentionRow, ReadReceiptRow,
    RelationshipRow, ReplayJobRow, TweetRow, UserRow,
};
use chrono::{DateTime, Utc};

use crate::batch::EventRow;

/// A new event and its id in `events`.
pub struct NewEvent<'a> {
    pub id: i64,
    pub row: &'a EventRow,
    /// The latest time it can have happened, when earlier than its own
    /// (`store::latest_possible`): state changes are dated no later.
    pub latest: Option<DateTime<Utc>>,
}

/// A subscription's revocation: when, by which app, and when it arrived.
pub type Revocation<'a> = (DateTime<Utc>, Option<&'a str>, DateTime<Utc>);

/// The rows a batch's new events write, each with its event's id. Every
/// list is in key order where two batches may write the same key, so that
/// concurrent batches wait on each other instead of deadlocking.
#[derive(Debug, Default)]
pub struct Rows<'a> {
    /// One per account: the snapshots merged (the newest observation's
    /// fields win, a field it lacks keeps the older's), with the event of
    /// the newest observation.
    pub users: Vec<(UserRow, i64)>,
    /// One per post: the real post over a repost's stub of it.
    pub tweets: Vec<(&'a TweetRow, i64)>,
    pub mentions: Vec<(&'a MentionRow, i64)>,
    pub favorites: Vec<(&'a FavoriteRow, i64)>,
    /// One per app: its newest observation.
    pub apps: Vec<&'a AppRow>,
    pub direct_messages: Vec<(&'a DirectMessageRow, i64)>,
    pub read_receipts: Vec<(&'a ReadReceiptRow, i64)>,
    /// Each dated no later than its event can have happened (a replayed copy
    /// of an undated change: inside its window), with whether X sent no
    /// time for it (dated on arrival).
    pub relationships: Vec<(RelationshipRow, i64, bool)>,
    pub deletions: Vec<(&'a DeletionRow, i64)>,
    /// With when the completion message arrived.
    pub replay_jobs: Vec<(&'a ReplayJobRow, i64, DateTime<Utc>)>,
    /// Every post each event holds, at any depth (`event_posts`).
    pub held_posts: Vec<(&'a str, i64)>,
    /// The newest revocation per (webhook, account).
    pub revocations: Vec<((&'a str, &'a str), Revocation<'a>)>,
}

pub fn reduce<'a>(new: &'a [NewEvent<'a>]) -> Rows<'a> {
    let mut rows = Rows::default();
    let mut users: BTreeMap<&str, (UserRow, i64)> = BTreeMap::new();
    let mut tweets: BTreeMap<&str, (&TweetRow, i64)> = BTreeMap::new();
    let mut apps: BTreeMap<&str, &AppRow> = BTreeMap::new();
    let mut revocations: BTreeMap<(&str, &str), Revocation<'_>> = BTreeMap::new();
    for event in new {
        let id = event.id;
        for record in &event.row.records {
            match record {
                Record::User(u) => match users.entry(u.user_id.as_str()) {
                    Entry::Vacant(vacant) => {
                        vacant.insert((u.clone(), id));
                    }
                    Entry::Occupied(mut known) => {
                        let (snapshot, known_id) = known.get_mut();
                        if u.observed_at > snapshot.observed_at {
                            *known_id = id;
                        }
                        *snapshot = snapshot.merged(u);
                    }
                },
                Record::Tweet(t) => match tweets.get(t.tweet_id.as_str()) {
                    Some((known, _)) if !known.is_stub() || t.is_stub() => {}
                    _ => {
                        tweets.insert(&t.tweet_id, (t, id));
                    }
                },
                Record::Mention(m) => rows.mentions.push((m, id)),
                Record::Favorite(f) => rows.favorites.push((f, id)),
                Record::App(a) => match apps.entry(a.app_id.as_str()) {
                    Entry::Vacant(vacant) => {
                        vacant.insert(a);
                    }
                    Entry::Occupied(mut known) => {
                        if a.observed_at > known.get().observed_at {
                            known.insert(a);
                        }
                    }
                },
                Record::DirectMessage(d) => rows.direct_messages.push((d, id)),
                Record::DmReadReceipt(r) => rows.read_receipts.push((r, id)),
                Record::Relationship(r) => {
                    let mut r = r.clone();
                    if let Some(latest) = event.latest {
                        r.event_time = r.event_time.min(latest);
                    }
                    rows.relationships.push((r, id, event.row.dated_on_arrival));
                }
                Record::TweetDeletion(d) => rows.deletions.push((d, id)),
                Record::Revoke(revoke) => {
                    let Some(webhook) = event.row.webhook_id.as_deref() else {
                        continue;
                    };
                    let this = (
                        revoke.revoked_at,
                        revoke.app_id.as_deref(),
                        event.row.received_at,
                    );
                    let newest = revocations
                        .entry((webhook, revoke.user_id.as_str()))
                        .or_insert(this);
                    if newest.0 < revoke.revoked_at {
                        *newest = this;
                    }
                }
                Record::ReplayJob(j) => rows.replay_jobs.push((j, id, event.row.received_at)),
            }
        }
    }
    rows.users = users.into_values().collect();
    rows.tweets = tweets.into_values().collect();
    rows.apps = apps.into_values().collect();
    rows.revocations = revocations.into_iter().collect();
    rows.held_posts = new
        .iter()
        .flat_map(|event| event.row.posts.iter().map(|post| (post.as_str(), event.id)))
        .collect();
    rows.held_posts.sort_unstable();
    rows
}

#[cfg(test)]
mod tests {
    use aaa_events::normalize::{Relationship, RevokeRow};
    use serde_json::json;

    use super::*;

    fn t(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_000_000 + minute * 60, 0).expect("a time")
    }

    fn event(records: Vec<Record>) -> EventRow {
        EventRow {
            webhook_id: Some("w1".into()),
            for_user_id: Some("1".into()),
            kind: "tweet_create_events".into(),
            kind_label: "tweet_create_events",
            natural_key: "k".into(),
            event_time: Some(t(0)),
            payload: json!({}),
            payload_text: "{}".into(),
            context: json!({}),
            activity_index: 0,
            topic: "aaa.raw".into(),
            partition: 0,
            offset: 0,
            request_id: None,
            received_at: t(100),
            dated_on_arrival: false,
            records,
            posts: Vec::new(),
        }
    }

    fn new_events(rows: &[EventRow]) -> Vec<NewEvent<'_>> {
        rows.iter()
            .enumerate()
            .map(|(i, row)| NewEvent {
                id: 10 + i as i64,
                row,
                latest: None,
            })
            .collect()
    }

    fn user(name: Option<&str>, profile: serde_json::Value, at: i64) -> Record {
        Record::User(UserRow {
            user_id: "7".into(),
            screen_name: name.map(str::to_owned),
            name: None,
            profile,
            observed_at: t(at),
        })
    }

    fn tweet(id: &str, text: &str, author: Option<&str>) -> Record {
        Record::Tweet(TweetRow {
            tweet_id: id.into(),
            author_id: author.map(str::to_owned),
            created_at: author.map(|_| t(0)),
            text: text.into(),
            is_longform: false,
            entities: json!({}),
            display_text_range: None,
            in_reply_to_status_id: None,
            in_reply_to_user_id: None,
            quoted_status_id: None,
            retweeted_status_id: None,
        })
    }

    #[test]
    fn an_account_is_one_row_whose_newest_observation_wins_without_erasing() {
        // The newest snapshot arrives first, in event 10; an older, fuller
        // one after it, in event 11.
        let rows = [
            event(vec![user(None, json!({"bio": "new"}), 5)]),
            event(vec![user(
                Some("old_name"),
                json!({"bio": "old", "site": "x"}),
                1,
            )]),
        ];
        let new = new_events(&rows);
        let reduced = reduce(&new);
        assert_eq!(reduced.users.len(), 1);
        let (snapshot, event_id) = &reduced.users[0];
        assert_eq!(*event_id, 10, "the event of the newest observation");
        assert_eq!(snapshot.observed_at, t(5));
        assert_eq!(
            snapshot.screen_name.as_deref(),
            Some("old_name"),
            "kept, not erased"
        );
        assert_eq!(snapshot.profile, json!({"bio": "new", "site": "x"}));
    }

    #[test]
    fn a_post_is_one_row_and_a_reposts_stub_gives_way_to_the_real_post() {
        let rows = [
            event(vec![tweet("b", "", None), tweet("a", "", None)]),
            event(vec![tweet("a", "hello", Some("1"))]),
            event(vec![tweet("a", "", None)]),
        ];
        let new = new_events(&rows);
        let reduced = reduce(&new);
        let tweets: Vec<(&str, &str, i64)> = reduced
            .tweets
            .iter()
            .map(|(t, id)| (t.tweet_id.as_str(), t.text.as_str(), *id))
            .collect();
        assert_eq!(tweets, [("a", "hello", 11), ("b", "", 10)], "in key order");
    }

    #[test]
    fn a_relationship_change_is_dated_no_later_than_it_can_have_happened() {
        let follow = |at| {
            Record::Relationship(RelationshipRow {
                relationship: Relationship::Follow,
                source_id: "1".into(),
                target_id: "2".into(),
                active: true,
                event_time: t(at),
            })
        };
        let mut undated = event(vec![follow(50)]);
        undated.dated_on_arrival = true;
        let rows = [event(vec![follow(3)]), undated];
        let mut new = new_events(&rows);
        new[1].latest = Some(t(20));
        let reduced = reduce(&new);
        let dated: Vec<(DateTime<Utc>, i64, bool)> = reduced
            .relationships
            .iter()
            .map(|(r, id, undated)| (r.event_time, *id, *undated))
            .collect();
        assert_eq!(dated, [(t(3), 10, false), (t(20), 11, true)]);
    }

    #[test]
    fn apps_keep_their_newest_observation_and_revocations_their_newest() {
        let app = |name: &str, at: i64| {
            Record::App(AppRow {
                app_id: "9".into(),
                name: Some(name.into()),
                url: None,
                observed_at: Some(t(at)),
            })
        };
        let revoke = |at: i64, app: &str| {
            Record::Revoke(RevokeRow {
                user_id: "1".into(),
                app_id: Some(app.into()),
                revoked_at: t(at),
            })
        };
        let rows = [
            event(vec![app("new", 9), revoke(9, "later")]),
            event(vec![app("old", 2), revoke(2, "earlier")]),
        ];
        let new = new_events(&rows);
        let reduced = reduce(&new);
        let apps: Vec<_> = reduced.apps.iter().map(|a| a.name.as_deref()).collect();
        assert_eq!(apps, [Some("new")]);
        assert_eq!(
            reduced.revocations,
            [(("w1", "1"), (t(9), Some("later"), t(100)))]
        );
    }

    #[test]
    fn every_post_an_event_holds_is_listed_in_key_order() {
        let mut first = event(vec![]);
        first.posts = vec!["p2".into(), "p1".into()];
        let mut second = event(vec![]);
        second.posts = vec!["p1".into()];
        let rows = [first, second];
        let new = new_events(&rows);
        assert_eq!(
            reduce(&new).held_posts,
            [("p1", 10), ("p1", 11), ("p2", 10)]
        );
    }
}
