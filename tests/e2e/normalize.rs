//! Normalization in Postgres: every kind lands in its table from a simulator
//! run, the documented SQL runs (as the read-only role, on an index),
//! rewriting a batch changes nothing, and relationship state does not depend
//! on the order in which changes arrive.

use std::collections::BTreeMap;
use std::time::Duration;

use aaa_consumer::{RawRecord, plan, write_batch};
use aaa_testkit::{Stack, StackOptions, TestDb, eventually};
use chrono::{TimeDelta, Utc};
use reqwest::Method;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aaa");
const WAIT: Duration = Duration::from_secs(90);
const LIVE_HORIZON: TimeDelta = TimeDelta::minutes(10);

const TABLES: &[&str] = &[
    "events",
    "dead_letters",
    "webhooks",
    "users",
    "tweets",
    "mentions",
    "favorites",
    "apps",
    "direct_messages",
    "dm_read_receipts",
    "relationship_events",
    "relationships",
    "tweet_deletions",
    "subscriptions",
    "replay_jobs",
];

async fn count(db: &TestDb, table: &str) -> i64 {
    // Table names come from the fixed list above.
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn snapshot(db: &TestDb) -> BTreeMap<&'static str, Value> {
    let mut tables = BTreeMap::new();
    for table in TABLES {
        let sql = format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]') FROM {table} t"
        );
        let rows: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        tables.insert(*table, rows);
    }
    tables
}

fn record(offset: i64, body: &Value) -> RawRecord {
    RawRecord {
        topic: "aaa.raw".into(),
        partition: 0,
        offset,
        payload: Some(body.to_string().into_bytes()),
        webhook_id: Some("1146654567674912769".into()),
        request_id: Some(format!("req-{offset}")),
        // Fixed, so that a re-read record is byte-for-byte the same input.
        received_at: "2026-11-25T12:00:00Z".parse().unwrap(),
        record_type: None,
    }
}

fn fixtures() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().ends_with(".json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_the_same_batch_twice_changes_nothing() {
    let db = TestDb::migrated().await;
    let records: Vec<RawRecord> = fixtures()
        .iter()
        .enumerate()
        .map(|(i, f)| record(i as i64, f))
        .collect();
    let batch = plan(&records);
    assert!(batch.dead_letters.is_empty(), "{:?}", batch.dead_letters);
    write_batch(&db.pool, &batch, LIVE_HORIZON).await.unwrap();
    let once = snapshot(&db).await;
    assert!(
        once.values()
            .filter(|rows| rows.as_array().is_some_and(|r| !r.is_empty()))
            .count()
            >= 13
    );
    // Same records again (a consumer restart), then re-read at other offsets (X's redelivery).
    write_batch(&db.pool, &batch, LIVE_HORIZON).await.unwrap();
    let later: Vec<RawRecord> = fixtures()
        .iter()
        .enumerate()
        .map(|(i, f)| record(1_000 + i as i64, f))
        .collect();
    write_batch(&db.pool, &plan(&later), LIVE_HORIZON)
        .await
        .unwrap();
    let twice = snapshot(&db).await;
    for table in TABLES {
        assert_eq!(
            twice[table], once[table],
            "{table} changed when the same events were written again"
        );
    }
}

fn relationship(kind: &str, verb: &str, source: &str, ms: i64) -> Value {
    json!({"for_user_id": source, kind: [{"type": verb, "created_timestamp": ms.to_string(),
           "source": {"id": source, "screen_name": source}, "target": {"id": "900", "screen_name": "target"}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relationship_state_is_the_same_whatever_the_order_of_arrival() {
    let db = TestDb::migrated().await;
    // follow, unfollow, follow again, and an unfollow at the same millisecond
    // as the last follow (the removal wins the tie).
    let changes = [
        ("follow_events", "follow", 1_000),
        ("unfollow_events", "unfollow", 2_000),
        ("follow_events", "follow", 3_000),
        ("unfollow_events", "unfollow", 3_000),
    ];
    let mut orders: Vec<Vec<usize>> = Vec::new();
    // Every permutation of four changes, each applied as its own batch (the
    // worst case: late replays arriving after newer events).
    fn permute(prefix: Vec<usize>, rest: Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if rest.is_empty() {
            out.push(prefix);
            return;
        }
        for (i, item) in rest.iter().enumerate() {
            let mut p = prefix.clone();
            p.push(*item);
            let mut r = rest.clone();
            r.remove(i);
            permute(p, r, out);
        }
    }
    permute(vec![], vec![0, 1, 2, 3], &mut orders);
    assert_eq!(orders.len(), 24);
    let mut offset = 0;
    for (n, order) in orders.iter().enumerate() {
        let source = format!("{}", 100 + n);
        for i in order {
            let (kind, verb, ms) = changes[*i];
            offset += 1;
            write_batch(
                &db.pool,
                &plan(&[record(offset, &relationship(kind, verb, &source, ms))]),
                LIVE_HORIZON,
            )
            .await
            .unwrap();
        }
    }
    let states: Vec<(String, bool, i64)> = sqlx::query_as(
        "SELECT source_id, active, (extract(epoch FROM event_time) * 1000)::int8 FROM relationships WHERE relationship = 'follow' ORDER BY source_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(states.len(), 24);
    for (source, active, ms) in states {
        assert_eq!((active, ms), (false, 3_000), "pair {source}");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM relationship_events").await,
        24 * 4
    );
}

/// docs/sql.md's queries, with placeholders filled from the data.
fn documented_queries(values: &BTreeMap<&str, String>) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/sql.md"),
    )
    .unwrap();
    let mut queries = Vec::new();
    let mut title = String::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            title = heading.to_owned();
        } else if line.trim() == "```sql" {
            block = Some(String::new());
        } else if line.trim() == "```" {
            if let Some(mut sql) = block.take() {
                for (name, value) in values {
                    sql = sql.replace(&format!(":{name}"), value);
                }
                queries.push((title.clone(), sql.trim().trim_end_matches(';').to_owned()));
            }
        } else if let Some(sql) = block.as_mut() {
            sql.push_str(line);
            sql.push('\n');
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulator_run_fills_every_table_and_the_documented_sql_works() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let epoch = Utc::now().to_rfc3339();
    let sim = stack
        .start_sim(&[
            "--clock-speed",
            "600",
            "--clock-real-epoch",
            &epoch,
            "--accounts",
            "30",
            "--revoke-share",
            "0.02",
            "--seed",
            "11",
        ])
        .await;
    sim.generate(1_500).await;
    let summary = sim.settled(WAIT).await;
    let delivered = summary["delivered"].as_i64().unwrap();
    eventually(WAIT, "every delivery stored", || async {
        (stack.db.count("SELECT count(*) FROM events").await == delivered).then_some(())
    })
    .await;

    // A replay, so replay_jobs fills too (the window has to age 31 simulated minutes: ~4 s).
    let webhook: Value = sim
        .api(Method::GET, "/2/webhooks")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let webhook_id = webhook["data"][0]["id"].as_str().unwrap().to_owned();
    let created: Vec<chrono::DateTime<Utc>> = sim
        .truth()
        .await
        .iter()
        .map(|l| l["created_at"].as_str().unwrap().parse().unwrap())
        .collect();
    let from =
        aaa_replay_window::format_minute(*created.iter().min().unwrap() - TimeDelta::minutes(1));
    let to =
        aaa_replay_window::format_minute(*created.iter().max().unwrap() + TimeDelta::minutes(2));
    let job = eventually(WAIT, "a replay to be accepted", || async {
        let response = sim
            .api(Method::POST, "/2/webhooks/replay")
            .json(&json!({"webhook_id": webhook_id, "from_date": from, "to_date": to}))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        body["data"]["job_id"].as_str().map(str::to_owned)
    })
    .await;
    eventually(WAIT, "the replay job's status stored", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM replay_jobs WHERE job_id = $1")
            .bind(&job)
            .fetch_one(&stack.db.pool)
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;

    for table in TABLES.iter().filter(|t| **t != "dead_letters") {
        assert!(
            count(&stack.db, table).await > 0,
            "{table} is empty after a simulator run"
        );
    }
    let checks = [
        (
            "longform tweets with their full text",
            "SELECT count(*) FROM tweets WHERE is_longform AND text LIKE '%#longform'",
        ),
        (
            "mentions with the block flag",
            "SELECT count(*) FROM mentions WHERE blocked IS NOT NULL",
        ),
        (
            "revoked subscriptions",
            "SELECT count(*) FROM subscriptions WHERE revoked_at IS NOT NULL",
        ),
        (
            "retweets",
            "SELECT count(*) FROM v_timeline WHERE shape = 'retweet'",
        ),
        (
            "quotes",
            "SELECT count(*) FROM v_timeline WHERE shape = 'quote'",
        ),
        (
            "replies",
            "SELECT count(*) FROM v_timeline WHERE shape = 'reply'",
        ),
        (
            "DM conversations",
            "SELECT count(*) FROM v_dm_conversations",
        ),
        (
            "relationships in force",
            "SELECT count(*) FROM v_relationships",
        ),
        (
            "normalized rows point at their raw event",
            "SELECT count(*) FROM tweets t JOIN events e ON e.id = t.event_id",
        ),
    ];
    for (what, sql) in checks {
        assert!(stack.db.count(sql).await > 0, "no {what}");
    }
    assert_eq!(
        stack
            .db
            .count("SELECT count(*) FROM replay_jobs WHERE job_state = 'Complete'")
            .await,
        1
    );
    assert_eq!(stack.db.count("SELECT count(*) FROM dead_letters").await, 0);

    // The documented queries, as the read-only role, each on an index.
    let pick = |sql: &'static str| {
        let pool = stack.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let mut values = BTreeMap::new();
    values.insert("account", format!("'{}'", pick("SELECT target_id FROM relationships WHERE relationship = 'follow' AND active LIMIT 1").await));
    values.insert(
        "other",
        format!(
            "'{}'",
            pick("SELECT sender_id FROM direct_messages LIMIT 1").await
        ),
    );
    values.insert(
        "author",
        format!(
            "'{}'",
            pick("SELECT author_id FROM tweets WHERE author_id IS NOT NULL LIMIT 1").await
        ),
    );
    values.insert(
        "tweet",
        format!(
            "'{}'",
            pick("SELECT tweet_id FROM favorites WHERE tweet_id IS NOT NULL LIMIT 1").await
        ),
    );
    values.insert("job", format!("'{job}'"));
    values.insert("since", "now() - interval '30 days'".to_owned());
    let queries = documented_queries(&values);
    assert!(
        queries.len() >= 10,
        "docs/sql.md has its queries ({})",
        queries.len()
    );
    let mut tx = stack.db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE aaa_reader")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    for (title, sql) in &queries {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{title}: {e}\n{sql}"));
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("Index"), "{title}: no index in\n{plan}");
    }
    // aaa_reader writes nothing.
    let denied = sqlx::query("INSERT INTO apps (app_id) VALUES ('x')")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");
}

/// Compliance mode: once a post is deleted, its text and media leave
/// `tweets`, its own event, a retweet, a like delivered to two subscribed
/// accounts (one event each), a retweet of a quote of it (two levels down),
/// a dead letter that holds it, and a quote that arrives after the
/// erasure; ids and times stay, and erasing again rewrites only the new
/// copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_posts_are_erased_everywhere_they_are_stored() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let sender = stack.sender();
    let post = json!({"id_str": "500", "id": 500, "text": "secret words",
        "created_at": "Wed Oct 10 20:19:24 +0000 2018", "timestamp_ms": "1539202764000",
        "user": {"id_str": "100", "screen_name": "a"},
        "entities": {"hashtags": [], "media": [{"media_url_https": "https://pbs/secret.jpg"}]}});
    let like = |account: &str| {
        json!({"for_user_id": account, "favorite_events": [{"id": "fav-1", "created_at": "Wed Oct 10 20:20:00 +0000 2018",
            "timestamp_ms": "1539202800000", "favorited_status": post, "user": {"id_str": "102"}}]})
    };
    let quote = json!({"id_str": "504", "text": "look at this",
        "created_at": "Wed Oct 10 20:21:00 +0000 2018", "timestamp_ms": "1539202860000",
        "user": {"id_str": "104"}, "quoted_status": post});
    let bodies = [
        json!({"for_user_id": "100", "tweet_create_events": [post]}),
        json!({"for_user_id": "101", "tweet_create_events": [{"id_str": "501", "text": "RT @a: secret words",
            "created_at": "Wed Oct 10 20:19:25 +0000 2018", "timestamp_ms": "1539202765000",
            "user": {"id_str": "101"}, "retweeted_status": post}]}),
        // The like, for the liked account and for the liker (both subscribed).
        like("100"),
        like("102"),
        // A retweet of a quote of the post.
        json!({"for_user_id": "105", "tweet_create_events": [{"id_str": "505", "text": "RT @q: look at this",
            "created_at": "Wed Oct 10 20:22:00 +0000 2018", "timestamp_ms": "1539202920000",
            "user": {"id_str": "105"}, "retweeted_status": quote}]}),
        // Authentic, but a post without an id: a dead letter that holds it.
        json!({"for_user_id": "106", "tweet_create_events": [{"text": "quoting", "quoted_status": post}]}),
        json!({"for_user_id": "100", "tweet_delete_events": [{"status": {"id": "500", "user_id": "100"},
            "timestamp_ms": "1539202900000"}]}),
    ];
    for body in &bodies {
        assert_eq!(sender.post(body.to_string().as_bytes()).await.unwrap(), 200);
    }
    let db = &stack.db;
    eventually(
        WAIT,
        "the post, its copies and its deletion stored",
        || async {
            (db.count("SELECT count(*) FROM events").await == 6
                && db.count("SELECT count(*) FROM dead_letters").await == 1
                && db.count("SELECT count(*) FROM tweet_deletions").await == 1)
                .then_some(())
        },
    )
    .await;
    let holding = || async {
        db.count("SELECT count(*) FROM events WHERE payload::text LIKE '%secret%'")
            .await
    };
    let dead_holding = || async {
        db.count("SELECT count(*) FROM dead_letters WHERE position('secret'::bytea IN raw) > 0")
            .await
    };
    assert_eq!(
        holding().await,
        5,
        "the post, the retweet's, both likes' and the nested copy"
    );
    assert_eq!(dead_holding().await, 1);

    let writer = db.watermark_pool().await;
    let done = aaa_watermark::compliance::erase_deleted(&writer, Utc::now(), 100)
        .await
        .unwrap();
    assert_eq!(
        (done.posts, done.payloads, done.dead_letters),
        (1, 5, 1),
        "{done:?}"
    );
    assert_eq!(
        holding().await,
        0,
        "no payload holds the deleted text or media"
    );
    assert_eq!(dead_holding().await, 0, "nor any dead letter");
    assert_eq!(
        db.count("SELECT count(*) FROM dead_letters").await,
        1,
        "a JSON dead letter is erased in place, not dropped"
    );
    let (text, entities): (String, Value) =
        sqlx::query_as("SELECT text, entities FROM tweets WHERE tweet_id = '500'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((text.as_str(), entities), ("", json!({})));
    // The facts stay: the retweet still names what it retweeted, the like
    // what it liked, and the original its author and time.
    assert_eq!(
        db.count("SELECT count(*) FROM tweets WHERE retweeted_status_id = '500'")
            .await,
        1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM favorites WHERE tweet_id = '500'")
            .await,
        1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE payload->>'id_str' = '500' AND payload->>'timestamp_ms' = '1539202764000' AND payload->>'aaa_erased' = 'true'").await,
        1
    );
    // Nothing left to erase (at most the check once more, which finds
    // nothing new).
    let again = aaa_watermark::compliance::erase_deleted(&writer, Utc::now(), 100)
        .await
        .unwrap();
    assert_eq!((again.posts, again.payloads), (0, 0), "{again:?}");

    // A quote of the deleted post arrives later: erased on the next run,
    // and only it is rewritten.
    let versions = || async {
        sqlx::query_as::<_, (i64, String)>("SELECT id, xmin::text FROM events ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap()
    };
    let before = versions().await;
    let late = json!({"for_user_id": "103", "tweet_create_events": [{"id_str": "502", "text": "look",
        "created_at": "Wed Oct 10 20:22:00 +0000 2018", "timestamp_ms": "1539202920000",
        "user": {"id_str": "103"}, "quoted_status": post}]});
    assert_eq!(sender.post(late.to_string().as_bytes()).await.unwrap(), 200);
    eventually(WAIT, "the late quote stored", || async {
        (db.count("SELECT count(*) FROM events").await == 7).then_some(())
    })
    .await;
    assert_eq!(holding().await, 1);
    let late_run = aaa_watermark::compliance::erase_deleted(&writer, Utc::now(), 100)
        .await
        .unwrap();
    assert_eq!((late_run.posts, late_run.payloads), (1, 1), "{late_run:?}");
    assert_eq!(holding().await, 0);
    let after = versions().await;
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "copies erased before are not rewritten"
    );
}

/// A copy of a deleted post committed by a transaction that was already
/// running when the erasure looked (it had not seen the deletion) is
/// invisible to that erasure; it is erased once that transaction ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_committed_during_an_erasure_is_erased_after_it() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let db = &stack.db;
    let consumer = sqlx::PgPool::connect(&stack.consumer_url).await.unwrap();
    let watermark = sqlx::PgPool::connect(&stack.watermark_url).await.unwrap();
    // A batch that stored a like of post 600 before its deletion was stored
    // (so it did not see it), still open.
    let mut batch = consumer.begin().await.unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO events (for_user_id, kind, natural_key, payload, activity_index, kafka_topic,
                             kafka_partition, kafka_offset, received_at)
         VALUES ('107', 'favorite_events', 'fav-600', $1::json, 0, 'aaa.raw', 0, 0, now()) RETURNING id",
    )
    .bind(json!({"id": "fav-600", "favorited_status": {"id_str": "600", "text": "secret"}}).to_string())
    .fetch_one(&mut *batch)
    .await
    .unwrap();
    sqlx::query("INSERT INTO event_posts (post_id, event_id) VALUES ('600', $1)")
        .bind(id)
        .execute(&mut *batch)
        .await
        .unwrap();
    let deletion = json!({"for_user_id": "100", "tweet_delete_events": [{"status": {"id": "600", "user_id": "100"},
        "timestamp_ms": "1539202900000"}]});
    assert_eq!(
        stack
            .sender()
            .post(deletion.to_string().as_bytes())
            .await
            .unwrap(),
        200
    );
    eventually(WAIT, "the deletion stored", || async {
        (db.count("SELECT count(*) FROM tweet_deletions").await == 1).then_some(())
    })
    .await;
    let first = aaa_watermark::compliance::erase_deleted(&watermark, Utc::now(), 100)
        .await
        .unwrap();
    assert_eq!((first.posts, first.payloads), (1, 0), "{first:?}");
    // Not checked again while that batch runs: it would not be seen.
    let early = aaa_watermark::compliance::erase_deleted(&watermark, Utc::now(), 100)
        .await
        .unwrap();
    assert_eq!(early.checked, 0, "{early:?}");
    batch.commit().await.unwrap();
    let holding = || async {
        db.count("SELECT count(*) FROM events WHERE payload::text LIKE '%secret%'")
            .await
    };
    assert_eq!(holding().await, 1);
    let check = aaa_watermark::compliance::erase_deleted(&watermark, Utc::now(), 100)
        .await
        .unwrap();
    assert_eq!((check.checked, check.payloads), (1, 1), "{check:?}");
    assert_eq!(holding().await, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM tweet_deletions WHERE erase_check_xmax IS NULL AND erased_at IS NOT NULL")
            .await,
        1,
        "checked once, then done"
    );
}

/// The migration's backfill of `event_posts` (a JSON path in SQL) finds
/// exactly what the consumer's `posts_in` finds, on every fixture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_finds_the_posts_the_consumer_indexes() {
    let db = TestDb::migrated().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut compared = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.ends_with(".expected.json") {
            continue;
        }
        let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let ours: Vec<String> = aaa_events::erase::posts_in(&value).into_iter().collect();
        let mut sql: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT o ->> k FROM jsonb_path_query($1::jsonb, 'strict $.**') AS o,
                 unnest(ARRAY['id_str', 'id']) AS k
             WHERE jsonb_typeof(o) = 'object' AND o ? 'text'
               AND jsonb_typeof(o -> k) IN ('string', 'number')",
        )
        .bind(value.to_string())
        .fetch_all(&db.pool)
        .await
        .unwrap();
        sql.sort();
        assert_eq!(sql, ours, "{name}");
        compared += usize::from(!ours.is_empty());
    }
    assert!(compared >= 5, "fixtures holding posts: {compared}");
}

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A like of the fixture's account, with its own id and time.
fn like(id: &str, at: &str) -> Value {
    let mut body = fixture("favorite_events.json");
    let item = &mut body["favorite_events"][0];
    item["id"] = json!(id);
    let at: chrono::DateTime<Utc> = at.parse().unwrap();
    item["timestamp_ms"] = json!(at.timestamp_millis());
    item["created_at"] = json!(at.format("%a %b %d %H:%M:%S +0000 %Y").to_string());
    body
}

/// Another transaction holding the webhook's and the subscription's rows
/// (another replica's batch did, until commit) does not hold up a batch:
/// "last seen" is written outside the batch transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_several_replicas_do_not_wait_on_the_webhook_row() {
    let db = TestDb::migrated().await;
    let first = like("like-1", "2026-11-25T11:00:00Z");
    write_batch(&db.pool, &plan(&[record(0, &first)]), LIVE_HORIZON)
        .await
        .unwrap();
    let mut holder = db.pool.begin().await.unwrap();
    for table in ["webhooks", "subscriptions"] {
        let sql = format!("SELECT count(*) FROM (SELECT 1 FROM {table} FOR UPDATE) locked");
        let locked: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *holder)
            .await
            .unwrap();
        assert_eq!(locked, 1, "{table}");
    }
    let second = plan(&[record(1, &like("like-2", "2026-11-25T11:30:00Z"))]);
    let stored = tokio::time::timeout(
        Duration::from_secs(15),
        write_batch(&db.pool, &second, LIVE_HORIZON),
    )
    .await
    .expect("the batch waited for the locked webhook row")
    .unwrap();
    assert_eq!(stored.inserted.values().sum::<u64>(), 1);
    holder.rollback().await.unwrap();
    // The consumer then widens "last seen" in a statement of its own.
    let mut seen = aaa_consumer::seen::Seen::default();
    seen.observe(&second.events);
    let later: chrono::DateTime<Utc> = "2026-11-25T12:30:00Z".parse().unwrap();
    let mut newer = second.events.clone();
    for row in &mut newer {
        row.received_at = later;
    }
    seen.observe(&newer);
    seen.write(&db.pool).await.unwrap();
    let last: chrono::DateTime<Utc> = sqlx::query_scalar("SELECT last_seen_at FROM webhooks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(last, later);
}

/// Active is derived from times on X's clock: a revocation makes a
/// subscription inactive, an event from before it (a replay, a retry)
/// changes nothing, activity after it (the account authorized the app
/// again) makes it active again; an older revocation never replaces a newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_subscription_is_active_again_after_new_activity() {
    let db = TestDb::migrated().await;
    let user = "2244994945";
    let revoke = |at: &str| json!({"user_event": {"revoke": {"date_time": at, "target": {"app_id": "13090192"}, "source": {"user_id": user}}}});
    let mut offset = 0;
    let mut apply = |body: Value| {
        offset += 1;
        let batch = plan(&[record(offset, &body)]);
        let pool = db.pool.clone();
        async move {
            write_batch(&pool, &batch, LIVE_HORIZON).await.unwrap();
            let mut seen = aaa_consumer::seen::Seen::default();
            seen.observe(&batch.events);
            seen.write(&pool).await.unwrap();
            sqlx::query_as::<_, (bool, Option<chrono::DateTime<Utc>>)>(
                "SELECT active, revoked_at FROM v_subscriptions WHERE user_id = $1",
            )
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let t = |s: &str| Some(s.parse::<chrono::DateTime<Utc>>().unwrap());
    assert_eq!(
        apply(like("l1", "2026-11-01T10:00:00Z")).await,
        (true, None)
    );
    let revoked = t("2026-11-10T10:00:00Z");
    assert_eq!(
        apply(revoke("2026-11-10T10:00:00+00:00")).await,
        (false, revoked)
    );
    assert_eq!(
        apply(like("l2", "2026-11-09T10:00:00Z")).await,
        (false, revoked),
        "an event from before the revocation, replayed later"
    );
    assert_eq!(
        apply(revoke("2026-11-05T10:00:00+00:00")).await,
        (false, revoked),
        "an older revocation arriving late"
    );
    let undated = json!({"data": {"event_uuid": "77001", "filter": {"user_id": user},
        "event_type": "follow.follow",
        "payload": {"source": {"data": {"id": user}}, "target": {"data": {"id": "333"}}}}});
    assert_eq!(
        apply(undated).await,
        (false, revoked),
        "an XAA event X sent without a time (a retry or replay, dated on arrival after the revocation) is no new authorization"
    );
    assert_eq!(
        apply(like("l3", "2026-11-20T10:00:00Z")).await,
        (true, revoked),
        "authorized again"
    );
}

/// An event family only XAA has is counted under the batch's label (`xaa`)
/// when inserted, as it is when it comes again as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xaa_only_events_are_counted_under_their_own_label() {
    let db = TestDb::migrated().await;
    let batch = plan(&[record(0, &fixture("xaa_spaces_start.json"))]);
    let first = write_batch(&db.pool, &batch, LIVE_HORIZON).await.unwrap();
    assert_eq!(first.inserted.get("xaa"), Some(&1), "{first:?}");
    assert!(!first.inserted.contains_key("unknown"), "{first:?}");
    let again = write_batch(&db.pool, &batch, LIVE_HORIZON).await.unwrap();
    assert_eq!(again.duplicates.get("xaa"), Some(&1), "{again:?}");
}

/// X Activity API events carry partial objects: a repost names its original
/// by id only, an author often comes as an id only. A partial object never
/// erases what is known, and the real post replaces a repost's stub of it
/// whichever arrives first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_xaa_objects_never_erase_what_is_known() {
    let db = TestDb::migrated().await;
    let original = |id: &str, author: &str, name: &str, at: &str| {
        json!({"for_user_id": "111", "tweet_create_events": [{
            "id_str": id, "text": "hello from XAA", "created_at": at,
            "user": {"id_str": author, "name": name, "screen_name": name.to_lowercase()}}]})
    };
    // Dan, known with his names from an older post of his.
    let dans = original("1", "444", "Dan", "Wed Jul 01 10:00:00 +0000 2026");
    write_batch(&db.pool, &plan(&[record(0, &dans)]), LIVE_HORIZON)
        .await
        .unwrap();
    // Dan's repost (newer, author by id only) of alice's post (by id only).
    let repost = fixture("xaa_post_repost_create.json");
    write_batch(&db.pool, &plan(&[record(1, &repost)]), LIVE_HORIZON)
        .await
        .unwrap();
    let dan: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT screen_name, name FROM users WHERE user_id = '444'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(dan, (Some("dan".into()), Some("Dan".into())));
    let stub: (Option<String>, String) =
        sqlx::query_as("SELECT author_id, text FROM tweets WHERE tweet_id = '2080761390344937796'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stub, (None, String::new()), "the stub the repost left");
    // The original arrives after its stub, and wins.
    let alices = original(
        "2080761390344937796",
        "111",
        "Alice",
        "Fri Jul 24 21:00:00 +0000 2026",
    );
    write_batch(&db.pool, &plan(&[record(2, &alices)]), LIVE_HORIZON)
        .await
        .unwrap();
    let post: (Option<String>, String) =
        sqlx::query_as("SELECT author_id, text FROM tweets WHERE tweet_id = '2080761390344937796'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(post, (Some("111".into()), "hello from XAA".into()));
    // And a stub arriving after the real post changes nothing; nor does a
    // stub and the post in one batch, in either order.
    write_batch(&db.pool, &plan(&[record(3, &repost)]), LIVE_HORIZON)
        .await
        .unwrap();
    let again: (Option<String>, String) =
        sqlx::query_as("SELECT author_id, text FROM tweets WHERE tweet_id = '2080761390344937796'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(again, post);
    let other = original("77", "111", "Alice", "Fri Jul 24 21:00:00 +0000 2026");
    let mut other_repost = repost.clone();
    other_repost["data"]["event_uuid"] = json!("9");
    other_repost["data"]["payload"]["id"] = json!("9");
    other_repost["data"]["payload"]["referenced_tweets"][0]["id"] = json!("77");
    write_batch(
        &db.pool,
        &plan(&[record(4, &other), record(5, &other_repost)]),
        LIVE_HORIZON,
    )
    .await
    .unwrap();
    let text: String = sqlx::query_scalar("SELECT text FROM tweets WHERE tweet_id = '77'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(text, "hello from XAA");
}

/// X Activity API follows carry no time and are dated on arrival. An old
/// follow that comes back in a replay must not undo an unfollow made after
/// the replayed window: while a window of its webhook is being replayed, an
/// undated change is dated no later than the window's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_undated_follow_never_undoes_a_newer_unfollow() {
    let db = TestDb::migrated().await;
    let at = |t: &str| t.parse::<chrono::DateTime<Utc>>().unwrap();
    let arriving = |offset: i64, body: &Value, received: &str| RawRecord {
        received_at: at(received),
        ..record(offset, body)
    };
    let state = || async {
        sqlx::query_as::<_, (bool, chrono::DateTime<Utc>)>(
            "SELECT active, event_time FROM relationships WHERE source_id = '111' AND target_id = '333'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    // Live: Alice unfollows Carol at 13:00.
    let unfollow = fixture("xaa_follow_unfollow.json");
    write_batch(
        &db.pool,
        &plan(&[arriving(0, &unfollow, "2026-11-25T13:00:00Z")]),
        LIVE_HORIZON,
    )
    .await
    .unwrap();
    assert_eq!(state().await, (false, at("2026-11-25T13:00:00Z")));
    // 10:00-12:00 is being replayed; the follow X could not deliver then
    // comes back at 13:40.
    sqlx::query(
        "INSERT INTO replay_windows (webhook_id, window_from, window_to, state, kind, job_id, submitted_at, created_at)
         VALUES ($1, $2, $3, 'submitted', 'gap', 'job-1', $4, $4)",
    )
    .bind("1146654567674912769")
    .bind(at("2026-11-25T10:00:00Z"))
    .bind(at("2026-11-25T12:00:00Z"))
    .bind(at("2026-11-25T13:30:00Z"))
    .execute(&db.pool)
    .await
    .unwrap();
    let follow = fixture("xaa_follow_follow.json");
    write_batch(
        &db.pool,
        &plan(&[arriving(1, &follow, "2026-11-25T13:40:00Z")]),
        LIVE_HORIZON,
    )
    .await
    .unwrap();
    assert_eq!(
        state().await,
        (false, at("2026-11-25T13:00:00Z")),
        "the replayed follow happened before the unfollow"
    );
    let history: Vec<(bool, chrono::DateTime<Utc>)> =
        sqlx::query_as("SELECT active, event_time FROM relationship_events ORDER BY event_time")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        history,
        [
            (true, at("2026-11-25T11:59:59.999Z")),
            (false, at("2026-11-25T13:00:00Z"))
        ],
        "kept in the history, dated at the latest it can have happened"
    );
}

/// If X sent one X Activity API event again under a new `event_uuid` (on a
/// duplicate send or a replay; X documents no such thing), the pipeline
/// cannot tell it from a new event when X sent it no other identity: a
/// follow is then stored twice in `events` and (unless both copies arrived
/// in the same millisecond) in `relationship_events`, while the current
/// state (`relationships`) is the same. Posts and likes keep
/// their own ids and stay single. (docs/xaa.md, "Ordering".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xaa_event_resent_under_a_new_uuid_is_stored_twice_and_state_is_unchanged() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let sim = stack
        .start_sim(&["--format", "xaa", "--accounts", "20", "--seed", "13"])
        .await;
    sim.set_faults(json!({"duplicate_share": 1.0, "fresh_xaa_uuid_on_resend": true}))
        .await;
    sim.generate(300).await;
    let truth_summary = sim.settled(WAIT).await;
    let truth = sim.truth().await;
    // Follows and unfollows: XAA gives them no identity but the uuid.
    let follows = truth
        .iter()
        .filter(|o| {
            (o["kind"] == "follow_events" || o["kind"] == "unfollow_events")
                && o["delivered"] == true
        })
        .count() as i64;
    let posts = truth
        .iter()
        .filter(|o| o["kind"] == "tweet_create_events" && o["delivered"] == true)
        .count() as i64;
    assert!(follows > 0 && posts > 0, "{truth_summary}");
    // Each delivery went twice; the second copy under a new uuid.
    let db = &stack.db;
    let stored = |sql: &'static str| async move { db.count(sql).await };
    eventually(WAIT, "both copies of every follow stored", || async {
        let rows = stored(
            "SELECT count(*) FROM events WHERE kind IN ('follow_events', 'unfollow_events')",
        )
        .await;
        (rows == 2 * follows).then_some(())
    })
    .await;
    // The history holds the copies too, unless a copy arrived in the same
    // millisecond as the original (dated on arrival, they are one row).
    let history =
        stored("SELECT count(*) FROM relationship_events WHERE relationship = 'follow'").await;
    assert!(
        history > follows && history <= 2 * follows,
        "{history} history rows for {follows} changes"
    );
    // The current state is what the changes themselves lead to: the last
    // change per relationship, in the order X generated them.
    let mut expected = BTreeMap::new();
    for owed in truth.iter().filter(|o| {
        (o["kind"] == "follow_events" || o["kind"] == "unfollow_events") && o["delivered"] == true
    }) {
        let data = &owed["body"]["data"];
        let id = |side: &str| {
            let party = &data["payload"][side];
            party["data"]["id"]
                .as_str()
                .or_else(|| party["id"].as_str())
                .map(str::to_owned)
        };
        let active = data["event_type"] == "follow.follow";
        expected.insert((id("source").unwrap(), id("target").unwrap()), active);
    }
    let state: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT source_id, target_id, active FROM relationships WHERE relationship = 'follow'",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    let state: BTreeMap<(String, String), bool> =
        state.into_iter().map(|(s, t, a)| ((s, t), a)).collect();
    assert_eq!(
        state, expected,
        "one current state per relationship, unchanged"
    );
    // Posts are keyed by their own id: one row per delivered post however
    // often and under whatever uuid it was sent. (Waited for: other
    // partitions may still be storing theirs when the follows are in.)
    eventually(WAIT, "one row per delivered post", || async {
        let rows = stored("SELECT count(*) FROM events WHERE kind = 'tweet_create_events'").await;
        (rows == posts).then_some(())
    })
    .await;
}

/// A post and its deletion written by two batches at once (two writers, or
/// a replay window carrying both): the post's batch holds its row while it
/// waits on something else (here, the author's `users` row, which the test
/// keeps locked), and the deletion's batch runs meanwhile. Whichever order
/// they commit in, the post ends up deleted: before, the post's batch found
/// no deletion and the deletion's update found no post, and `deleted_at`
/// stayed NULL for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_and_its_deletion_in_concurrent_batches_end_deleted() {
    let db = TestDb::migrated().await;
    let consumer = sqlx::PgPool::connect(&db.consumer_url().await)
        .await
        .unwrap();
    let tweet = |id: &str, text: &str| {
        json!({"for_user_id": "700", "tweet_create_events": [{"id_str": id, "text": text,
            "created_at": "Wed Oct 10 20:19:24 +0000 2018", "timestamp_ms": "1539202764000",
            "user": {"id_str": "700", "screen_name": "author"}}]})
    };
    // The author is known (a `users` row the test can lock).
    write_batch(
        &consumer,
        &plan(&[record(1, &tweet("800", "first"))]),
        LIVE_HORIZON,
    )
    .await
    .unwrap();
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE user_id = '700' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();

    let waiting = |statement: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
            )
            .bind(format!("%{statement}%"))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let post_batch = {
        let (pool, batch) = (
            consumer.clone(),
            plan(&[record(2, &tweet("801", "soon deleted"))]),
        );
        tokio::spawn(async move { write_batch(&pool, &batch, LIVE_HORIZON).await })
    };
    eventually(
        WAIT,
        "the post's batch holding the post, waiting on its author",
        || async { (waiting("INSERT INTO users").await == 1).then_some(()) },
    )
    .await;
    let deletion = json!({"for_user_id": "700", "tweet_delete_events": [{"status": {"id": "801", "user_id": "700"},
        "timestamp_ms": "1539202900000"}]});
    let deletion_batch = {
        let (pool, batch) = (consumer.clone(), plan(&[record(3, &deletion)]));
        tokio::spawn(async move { write_batch(&pool, &batch, LIVE_HORIZON).await })
    };
    // The deletion's batch either commits now (the old way) or waits for
    // the post's row.
    eventually(WAIT, "the deletion's batch to commit or wait", || async {
        (deletion_batch.is_finished() || waiting("INSERT INTO tweets").await == 1).then_some(())
    })
    .await;
    holder.rollback().await.unwrap();
    post_batch.await.unwrap().unwrap();
    deletion_batch.await.unwrap().unwrap();

    let deleted: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT deleted_at FROM tweets WHERE tweet_id = '801'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(deleted.is_some(), "the post is marked deleted");
    assert_eq!(
        db.count("SELECT count(*) FROM tweets").await,
        2,
        "no placeholder row left behind"
    );
}

/// An app's name and URL are those of the newest message that showed them,
/// whichever batch is written last (two writers, a replay of old messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_keeps_its_newest_observation_whatever_order_batches_land_in() {
    let db = TestDb::migrated().await;
    let consumer = sqlx::PgPool::connect(&db.consumer_url().await)
        .await
        .unwrap();
    let dm = |id: &str, ms: i64, name: &str| {
        json!({"for_user_id": "900", "direct_message_events": [{"type": "message_create", "id": id,
            "created_timestamp": ms.to_string(),
            "message_create": {"target": {"recipient_id": "900"}, "sender_id": "901", "source_app_id": "42",
                "message_data": {"text": "hi", "entities": {}}}}],
            "apps": {"42": {"id": "42", "name": name, "url": "https://app.example"}}})
    };
    let name = || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT name FROM apps WHERE app_id = '42'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    write_batch(
        &consumer,
        &plan(&[record(1, &dm("d2", 1_700_000_100_000, "Renamed"))]),
        LIVE_HORIZON,
    )
    .await
    .unwrap();
    // An older message (replayed, or the other writer's batch) lands after.
    write_batch(
        &consumer,
        &plan(&[record(2, &dm("d1", 1_700_000_000_000, "Original"))]),
        LIVE_HORIZON,
    )
    .await
    .unwrap();
    assert_eq!(name().await.as_deref(), Some("Renamed"));
    // A newer one does replace it; within one batch, the newest wins too.
    write_batch(
        &consumer,
        &plan(&[
            record(3, &dm("d4", 1_700_000_300_000, "Newest")),
            record(4, &dm("d3", 1_700_000_200_000, "Between")),
        ]),
        LIVE_HORIZON,
    )
    .await
    .unwrap();
    assert_eq!(name().await.as_deref(), Some("Newest"));
}

/// X bills every delivered event by type, once per UTC day: the consumer
/// counts first copies, copies of the same day (free: X dedupes them) and
/// copies of an event first stored on an earlier day (billed again), per
/// UTC day and billed type, whichever envelope carried them; the watermark
/// prices them with the configured prices (`v_x_charges_daily`) and reports
/// today's estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_charges_are_counted_per_utc_day_as_x_dedupes_them() {
    let stack = Stack::start(
        BIN,
        StackOptions {
            watermark_env: vec![
                ("AAA_X_PRICES", "post.create=0.5".into()),
                ("AAA_WATERMARK_MAINTENANCE_SECS", "1".into()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    let started_on = Utc::now().date_naive();
    let sender = stack.sender();
    let db = &stack.db;
    let post = fixture("tweet_create_events.json");
    let aaa_like = fixture("favorite_events.json");
    for body in [
        &post,
        &post,
        &fixture("xaa_like_create_inbound.json"),
        &aaa_like,
        &fixture("direct_message_events.json"),
    ] {
        assert_eq!(sender.post(body.to_string().as_bytes()).await.unwrap(), 200);
    }
    let totals = || async {
        sqlx::query_as::<_, (String, i64, i64, i64)>(
            "SELECT event_type, sum(stored)::int8, sum(again_same_day)::int8, sum(again_later_day)::int8
             FROM x_deliveries_daily GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let expected = |later: i64| {
        vec![
            ("dm.received".to_owned(), 1, 0, 0),
            ("like.create".to_owned(), 2, 0, later),
            ("post.create".to_owned(), 1, 1, 0),
        ]
    };
    eventually(WAIT, "every delivery counted", || async {
        (totals().await == expected(0)).then_some(())
    })
    .await;
    // The AAA like was first stored two days ago; X delivers it again today
    // (a replay across midnight): X bills it again.
    sqlx::query(
        "UPDATE events SET received_at = received_at - interval '2 days'
         WHERE kind = 'favorite_events' AND NOT context ? 'xaa'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        sender.post(aaa_like.to_string().as_bytes()).await.unwrap(),
        200
    );
    eventually(
        WAIT,
        "the copy from an earlier day counted as billed",
        || async { (totals().await == expected(1)).then_some(()) },
    )
    .await;

    let sim = stack.start_sim(aaa_testkit::SMALL_SIM_ARGS).await;
    let watermark = stack.spawn_watermark(&sim, "watermark-a");
    let admin = format!("http://{}", watermark.addr("admin").await);
    let charges: Vec<(String, i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT event_type, sum(billable)::int8, sum(duplicates_absorbed)::int8,
                sum(duplicates_billed)::int8, sum(estimated_usd)::float8
         FROM v_x_charges_daily GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        charges,
        vec![
            ("dm.received".to_owned(), 1, 0, 0, 0.01),
            ("like.create".to_owned(), 3, 1, 1, 0.003),
            // The configured price, over the default 0.005.
            ("post.create".to_owned(), 1, 1, 0, 0.5),
        ]
    );
    let estimate = eventually(WAIT, "today's estimate reported", || async {
        let usd = aaa_testkit::metric(&admin, "aaa_x_estimated_charges_today_usd").await;
        (usd > 0.0).then_some(usd)
    })
    .await;
    if Utc::now().date_naive() == started_on {
        assert!((estimate - 0.513).abs() < 1e-9, "{estimate}");
        assert_eq!(
            aaa_testkit::metric(&admin, "aaa_x_duplicates_absorbed_today").await,
            2.0
        );
    }
}

/// During a migration X delivers a follow in both envelopes: the Account
/// Activity copy with X's time, the X Activity API copy without one (dated
/// on arrival), so they are two rows of `relationship_events`. The
/// watermark's maintenance drops the undated copy that repeats the pair's
/// state before it, whichever arrived first; real changes after it (an
/// unfollow, a follow again) stay, and a resend of the last is dropped too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relationship_change_delivered_in_both_envelopes_is_one_change() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let sender = stack.sender();
    let db = &stack.db;
    let xaa = |event_type: &str, uuid: &str| {
        let mut body = fixture("xaa_follow_follow.json");
        body["data"]["event_type"] = json!(event_type);
        body["data"]["event_uuid"] = json!(uuid);
        body
    };
    let mut aaa = fixture("follow_events.json");
    aaa["for_user_id"] = json!("111");
    let item = &mut aaa["follow_events"][0];
    item["source"]["id"] = json!(111);
    item["source"]["id_str"] = json!("111");
    item["target"]["id"] = json!(333);
    item["target"]["id_str"] = json!("333");
    item["created_timestamp"] = json!(
        (Utc::now() - TimeDelta::minutes(10))
            .timestamp_millis()
            .to_string()
    );
    let changes = || {
        sqlx::query_as::<_, (bool, bool)>(
            "SELECT active, undated FROM relationship_events
             WHERE relationship = 'follow' AND source_id = '111' AND target_id = '333'
             ORDER BY event_time, active DESC",
        )
        .fetch_all(&db.pool)
    };
    // The XAA copy first, then the AAA one; then XAA only: an unfollow, a
    // follow again, and a resend of it under a new uuid.
    for (n, body) in [
        xaa("follow.follow", "1"),
        aaa,
        xaa("follow.unfollow", "2"),
        xaa("follow.follow", "3"),
        xaa("follow.follow", "4"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(sender.post(body.to_string().as_bytes()).await.unwrap(), 200);
        eventually(WAIT, "the change stored", || async {
            (changes().await.unwrap().len() == n + 1).then_some(())
        })
        .await;
    }
    let pool = db.watermark_pool().await;
    let since = Utc::now() - TimeDelta::hours(48);
    let dropped = aaa_watermark::maintenance::drop_repeated_relationship_changes(&pool, since)
        .await
        .unwrap();
    assert_eq!(
        dropped, 2,
        "the XAA copy of the first follow, and the resend"
    );
    assert_eq!(
        changes().await.unwrap(),
        vec![(true, false), (false, true), (true, true)],
        "follow (X's time), unfollow, follow again"
    );
    let again = aaa_watermark::maintenance::drop_repeated_relationship_changes(&pool, since)
        .await
        .unwrap();
    assert_eq!(again, 0);
    let (active,): (bool,) = sqlx::query_as(
        "SELECT active FROM relationships WHERE relationship = 'follow' AND source_id = '111' AND target_id = '333'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(active, "the current state is unchanged");
}
