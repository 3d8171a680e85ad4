//! One chaos run: the stack, the simulator as X, a watermark, live traffic;
//! faults are injected by the scenario, then `settle` checks the invariants
//! against ground truth and reports.

use std::io::Write as _;
use std::time::{Duration, Instant};

use aaa_testkit::{
    Balancer, Key, Service, SimProcess, Stack, StackOptions, Traffic, delivered_keys_in,
    eventually, keys_of, metric, stored_keys,
};
use chrono::TimeDelta;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aaa");
/// Settling includes waiting out X's retries and replay eligibility, in
/// simulated time (1 s = 5 min).
const WAIT: Duration = Duration::from_secs(180);
const SPEED: f64 = 300.0;
/// The watermark audits every closed simulated hour (12 real seconds), so
/// what X drops while the receiver is up comes back within a run.
const AUDIT_MINUTES: u32 = 60;
/// Every family the simulator generates, interactions between subscribed
/// accounts (delivered to both) and subscription revokes included.
const SIM_ARGS: &[&str] = &["--accounts", "20", "--revoke-share", "0.01"];

/// What a scenario settled to (also its row in the report).
pub struct Settled {
    /// The simulator's ground truth: every owed delivery and its attempts.
    pub truth: Vec<Value>,
    /// Per stored kind: (kind, rows, rows whose first copy was an XAA envelope).
    pub events_by_kind: Vec<(String, i64, i64)>,
    pub recovered_by_replay: i64,
    pub duplicates_absorbed: u64,
    /// Delivery attempts X saw fail (and retried or gave up on).
    pub failed_attempts: u64,
    /// Replay windows the watermark opened for gaps coverage found.
    pub gap_windows: i64,
    /// Audit windows (closed slots replayed although covered).
    pub audit_windows: i64,
    /// Activities the audits stored that were not stored before.
    pub recovered_by_audits: i64,
    /// Owed, never delivered: only where windows aged out.
    pub lost: usize,
    pub expired_minutes: i64,
    /// `aaa_watermark_expired_minutes_total` of the running watermark once
    /// settled (what the AaaGapExpired alert sees).
    pub expired_counted: f64,
    /// Replay jobs X reported Complete that the running watermark judged
    /// unproven by the receivers and submitted again.
    pub receivers_missed: f64,
    /// Relationship changes X sent no time for (XAA follows, blocks, mutes)
    /// kept in `relationship_events`, none repeating the state before it.
    pub undated_changes: i64,
}

/// The numbers, not the ground truth (thousands of lines).
impl std::fmt::Debug for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settled")
            .field("owed", &self.truth.len())
            .field("recovered_by_replay", &self.recovered_by_replay)
            .field("duplicates_absorbed", &self.duplicates_absorbed)
            .field("failed_attempts", &self.failed_attempts)
            .field("gap_windows", &self.gap_windows)
            .field("receivers_missed", &self.receivers_missed)
            .field("audit_windows", &self.audit_windows)
            .field("undated_changes", &self.undated_changes)
            .field("recovered_by_audits", &self.recovered_by_audits)
            .field("lost", &self.lost)
            .field("expired_minutes", &self.expired_minutes)
            .field("events_by_kind", &self.events_by_kind)
            .finish()
    }
}

/// What a scenario may end with.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    NothingLost,
    /// Some gap aged past X's 24 h: what it held is lost, and only that.
    AgedOut,
}

pub struct Run {
    pub stack: Stack,
    pub sim: SimProcess,
    pub watermark: Service,
    traffic: Option<Traffic>,
    clock: aaa_common::Clock,
    /// XAA carries no time on follows, blocks and mutes (they are dated on
    /// receipt), so the latest change per relationship is only comparable
    /// with ground truth for AAA-only traffic.
    relationships_comparable: bool,
    /// Authentic bodies Postgres refuses for good (`inject_poison`): each must
    /// end up in `dead_letters`, and nothing else may.
    poison: Vec<Vec<u8>>,
    /// Receiver replicas besides the stack's own, with their addresses,
    /// behind a load balancer (`start_replicated`), which lives as long as
    /// the run.
    pub receivers: Vec<(Service, std::net::SocketAddr)>,
    pub balancer: Option<Balancer>,
    /// Consumers in the stack's group besides the stack's own.
    pub consumers: Vec<Service>,
}

impl Run {
    /// The stack with live traffic flowing and coverage established.
    pub async fn start() -> Run {
        Run::start_with(StackOptions {
            audit_minutes: AUDIT_MINUTES,
            ..StackOptions::scaled(SPEED)
        })
        .await
    }

    pub async fn start_with(options: StackOptions) -> Run {
        Run::start_with_sim(options, &[]).await
    }

    /// With extra simulator arguments (e.g. `--format both`).
    /// The stack for a scenario to arrange before traffic starts
    /// ([`Run::start_behind_balancer`]).
    pub async fn stack(options: StackOptions) -> Stack {
        Stack::start(BIN, options).await
    }

    pub async fn start_with_sim(options: StackOptions, sim_args: &[&str]) -> Run {
        Run::launch(Stack::start(BIN, options).await, sim_args, Vec::new(), None).await
    }

    /// `receivers` receiver replicas behind a load balancer (X delivers to
    /// it) and `consumers` consumers in one group.
    pub async fn start_replicated(
        options: StackOptions,
        receivers: usize,
        consumers: usize,
    ) -> Run {
        let mut stack = Stack::start(BIN, options).await;
        let own = stack.receiver_addr();
        let mut replicas = Vec::new();
        for i in 1..receivers {
            replicas.push(
                stack
                    .spawn_receiver_replica(&format!("receiver-{i}"), None)
                    .await,
            );
        }
        let upstreams = std::iter::once(own)
            .chain(replicas.iter().map(|(_, a)| *a))
            .collect();
        let balancer = Balancer::start(upstreams).await;
        stack.webhook_url = format!("http://{}/webhooks/x", balancer.addr);
        let mut run = Run::launch(stack, &[], replicas, Some(balancer)).await;
        for _ in 1..consumers {
            run.consumers.push(run.stack.spawn_consumer());
        }
        run
    }

    /// The stack's receiver and `replicas` (already started) behind a load
    /// balancer X delivers to, in that order.
    pub async fn start_behind_balancer(
        mut stack: Stack,
        replicas: Vec<(Service, std::net::SocketAddr)>,
    ) -> Run {
        let upstreams = std::iter::once(stack.receiver_addr())
            .chain(replicas.iter().map(|(_, a)| *a))
            .collect();
        let balancer = Balancer::start(upstreams).await;
        stack.webhook_url = format!("http://{}/webhooks/x", balancer.addr);
        Run::launch(stack, &[], replicas, Some(balancer)).await
    }

    async fn launch(
        mut stack: Stack,
        sim_args: &[&str],
        receivers: Vec<(Service, std::net::SocketAddr)>,
        balancer: Option<Balancer>,
    ) -> Run {
        let clock = stack.options.clock();
        // Maintenance (compliance erase included) every 2 real seconds, so
        // `settle` sees every deleted post erased.
        stack
            .options
            .watermark_env
            .push(("AAA_WATERMARK_MAINTENANCE_SECS", "2".into()));
        let args: Vec<&str> = SIM_ARGS.iter().chain(sim_args).copied().collect();
        let sim = stack.start_sim(&args).await;
        let watermark = stack.spawn_watermark(&sim, "watermark-a");
        let traffic = stack.start_traffic(&sim, WAIT).await;
        Run {
            stack,
            sim,
            watermark,
            traffic: Some(traffic),
            clock,
            relationships_comparable: !sim_args.contains(&"--format"),
            poison: Vec::new(),
            receivers,
            balancer,
            consumers: Vec::new(),
        }
    }

    /// Waits until `d` of simulated time has passed.
    pub async fn wait_sim(&self, d: TimeDelta) {
        let until = self.clock.now() + d;
        eventually(WAIT, "simulated time to pass", || async {
            (self.clock.now() >= until).then_some(())
        })
        .await;
    }

    /// The receiver is down (SIGKILL) for `d` of simulated time.
    pub async fn receiver_outage(&mut self, d: TimeDelta) {
        self.stack.receiver.kill();
        self.wait_sim(d).await;
        self.stack.restart_receiver().await;
    }

    /// While on, every insert into `events` fails, as on a full disk.
    pub async fn fail_event_writes(&self, on: bool) {
        let statements: &[&'static str] = if on {
            &[
                "CREATE OR REPLACE FUNCTION chaos_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'chaos: could not extend file (simulated full disk)'; END $$",
                "CREATE TRIGGER chaos_fail BEFORE INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION chaos_fail()",
            ]
        } else {
            &["DROP TRIGGER IF EXISTS chaos_fail ON events"]
        };
        for sql in statements {
            sqlx::query(*sql)
                .execute(&self.stack.db.pool)
                .await
                .expect("chaos trigger");
        }
    }

    /// An operator submits a replay of [now - `ago`, now - `until_ago`]
    /// directly at X (not through the watermark).
    pub async fn operator_replay(&self, ago: TimeDelta, until_ago: TimeDelta) {
        let now = self.clock.now();
        let answer = self
            .sim
            .api(reqwest::Method::POST, "/2/webhooks/replay")
            .json(&json!({
                "webhook_id": self.stack.webhook_id,
                "from_date": aaa_replay_window::format_minute(now - ago),
                "to_date": aaa_replay_window::format_minute(now - until_ago),
            }))
            .send()
            .await
            .expect("replay request");
        assert_eq!(answer.status(), 200, "the operator's replay was accepted");
    }

    /// Posts, signed as X would, four poison bodies for each of `accounts`
    /// (so several partitions): NUL in an activity (dead-lettered when
    /// planned), and three Postgres refuses for good: NUL in the envelope's
    /// side data, a timestamp before 4713 BC, a key too long for its index.
    /// The receiver accepts them: they are authentic.
    pub async fn inject_poison(&mut self, accounts: std::ops::Range<u64>, tag: &str) {
        use rand::Rng;
        let mut rng = rand::rng();
        let client = reqwest::Client::new();
        for account in accounts {
            let user = format!("{}", 9_000_000 + account);
            let long_key: String = (0..20_000)
                .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
                .collect();
            let bodies = [
                json!({"for_user_id": user, "favorite_events": [{"id": format!("{tag}\u{0}{account}"), "timestamp_ms": "1700000000000"}]}),
                json!({"for_user_id": user, "users": {user.clone(): {"name": "a\u{0}b"}}, "favorite_events": [{"id": format!("{tag}-ctx-{account}"), "timestamp_ms": "1700000000000"}]}),
                json!({"for_user_id": user, "favorite_events": [{"id": format!("{tag}-bc-{account}"), "timestamp_ms": "-300000000000000"}]}),
                json!({"for_user_id": user, "favorite_events": [{"id": long_key, "timestamp_ms": "1700000000000"}]}),
            ];
            for body in bodies {
                let body = body.to_string().into_bytes();
                let status = client
                    .post(&self.stack.webhook_url)
                    .header(
                        aaa_signing::SIGNATURE_HEADER,
                        aaa_signing::sign(self.stack.secret.as_bytes(), &body),
                    )
                    .body(body.clone())
                    .send()
                    .await
                    .expect("an answer")
                    .status();
                assert_eq!(status, 200, "the receiver accepts an authentic body");
                self.poison.push(body);
            }
        }
    }

    /// The scenario's simulated now.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Waits until a watermark's first round has marked where tracking
    /// began. Nothing before that mark is ever judged (a watermark installed
    /// late cannot know what X owed before it), so a scenario that stops the
    /// watermark to age a gap past X's 24 h must let it mark first: on a
    /// loaded machine a watermark killed at once may not have.
    pub async fn tracking_began(&self) {
        eventually(
            WAIT,
            "the watermark to mark where tracking began",
            || async {
                let marked = self
                    .stack
                    .db
                    .count("SELECT count(*) FROM watermark_progress WHERE tracked_from IS NOT NULL")
                    .await;
                (marked > 0).then_some(())
            },
        )
        .await;
    }

    /// How far the watermark has judged the webhook's timeline.
    pub async fn judged_to(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        sqlx::query_scalar("SELECT max(judged_to) FROM watermark_progress")
            .fetch_one(&self.stack.db.pool)
            .await
            .expect("watermark progress")
    }

    /// Waits up to `WAIT` until the watermark has judged the timeline up to
    /// `at` and `also` holds; if not, says where judging and the consumer's
    /// fences stand, with the watermark's last log lines.
    pub async fn await_judged<F, Fut>(
        &self,
        at: chrono::DateTime<chrono::Utc>,
        what: &str,
        mut also: F,
    ) where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        loop {
            let judged = self.judged_to().await;
            if judged >= Some(at) && also().await {
                return;
            }
            if started.elapsed() > WAIT {
                let fenced: Option<chrono::DateTime<chrono::Utc>> =
                    sqlx::query_scalar("SELECT min(fence_time) FROM consumer_fences")
                        .fetch_one(&self.stack.db.pool)
                        .await
                        .unwrap_or_default();
                panic!(
                    "{what}: after {WAIT:?} judged to {judged:?}, waiting for {at} (also: {}); the consumer's fences (all partitions) stored up to {fenced:?}\nthe watermark's last log lines:\n{}",
                    also().await,
                    self.watermark.output_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (gap windows, audit windows, activities the audits recovered).
    async fn windows(&self) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE kind = 'gap'), count(*) FILTER (WHERE kind = 'audit'),
                    coalesce(sum(recovered) FILTER (WHERE kind = 'audit'), 0)::int8
             FROM replay_windows",
        )
        .fetch_one(&self.stack.db.pool)
        .await
        .expect("replay windows")
    }

    /// Sum of the samples whose line starts with `prefix` on the receiver's
    /// /metrics.
    pub async fn receiver_metric(&self, prefix: &str) -> f64 {
        metric(&self.stack.receiver_admin, prefix).await
    }

    /// Waits (the fault still on) until the consumer has seen a write fail.
    pub async fn consumer_noticed_write_failures(&self) {
        eventually(
            Duration::from_secs(30),
            "the consumer's writes to fail",
            || async {
                let failures = self
                    .consumer_metric("aaa_consumer_write_failures_total")
                    .await;
                (failures > 0.0).then_some(())
            },
        )
        .await;
    }

    /// Sum of a metric's samples on the running consumer's /metrics.
    pub async fn consumer_metric(&self, name: &str) -> f64 {
        let admin = self.stack.consumer.addr("admin").await;
        metric(&format!("http://{admin}"), name).await
    }

    /// Stops traffic, waits until X owes nothing and no gap is open, checks
    /// the invariants, and adds the scenario's row to the report.
    pub async fn settle(self, scenario: &str) -> Settled {
        self.settle_expecting(scenario, Expect::NothingLost).await
    }

    /// Settles, and `expect` says whether some of what X owes may have aged
    /// out (then it must lie in windows marked expired).
    pub async fn settle_expecting(mut self, scenario: &str, expect: Expect) -> Settled {
        if let Some(traffic) = self.traffic.take() {
            traffic.stop().await;
        }
        let began = Instant::now();
        let began_sim = self.clock.now();
        self.sim.settled(WAIT).await;
        let last = std::sync::Mutex::new(Value::Null);
        let settled = tokio::time::timeout(
            WAIT,
            eventually(WAIT * 2, "settling", || async {
                let open = self
                .stack
                .db
                .count(
                    "SELECT count(*) FROM replay_windows WHERE state IN ('pending', 'submitted')",
                )
                .await;
                let expired = self
                    .stack
                    .db
                    .count("SELECT count(*) FROM replay_windows WHERE state = 'expired' AND kind = 'gap'")
                    .await;
                let summary = self.sim.summary().await;
                // The watermark has judged the timeline up to when settling
                // began, so every gap in it is recorded (and, open == 0,
                // closed): X's own retries finishing first proves nothing
                // about that.
                let judged = self.judged_to().await >= Some(began_sim);
                let done = judged
                    && match expect {
                        Expect::NothingLost => summary["missing"] == 0,
                        Expect::AgedOut => expired > 0,
                    };
                *last.lock().unwrap_or_else(|p| p.into_inner()) =
                    json!({"open_windows": open, "expired_windows": expired, "summary": summary});
                (open == 0 && done && summary["pending"] == 0).then_some(summary)
            }),
        )
        .await;
        let summary = match settled {
            Ok(summary) => summary,
            Err(_) => {
                let windows: Value = sqlx::query_scalar(
                    "SELECT coalesce(jsonb_agg(to_jsonb(w) ORDER BY w.window_from), '[]')
                     FROM (SELECT kind, state, window_from, window_to, job_id, attempts, last_error FROM replay_windows) w",
                )
                .fetch_one(&self.stack.db.pool)
                .await
                .unwrap_or_default();
                let missing: Vec<Value> = self
                    .sim
                    .truth()
                    .await
                    .into_iter()
                    .filter(|o| o["delivered"] != true)
                    .take(5)
                    .map(|mut o| {
                        o["body"] = Value::Null;
                        o
                    })
                    .collect();
                panic!(
                    "{scenario}: not settled after {WAIT:?}: {}\nwindows: {windows:#}\nfirst missing: {missing:#?}",
                    last.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        // Settled: the ground truth no longer changes; read it once.
        let truth = self.sim.truth().await;
        let expected = delivered_keys_in(&truth);
        eventually(
            WAIT,
            "Postgres to hold every delivered activity",
            || async {
                (self.stack.db.count("SELECT count(*) FROM events").await >= expected.len() as i64)
                    .then_some(())
            },
        )
        .await;
        let settle_seconds = began.elapsed().as_secs_f64();

        let stored = stored_keys(&self.stack.db).await;
        // X may count as failed a delivery the pipeline stored: the
        // receiver was killed after producing it, its answer came after X's
        // timeout, or the broker took the record after the receiver had
        // given up and answered 503. X retries most deliveries (then they
        // count as delivered), but not a replay job's completion message,
        // and nothing once it aged out. So Postgres may hold more than X saw
        // delivered, and only what X sent: never anything it did not.
        // "Sent" is read again after `stored`: the watermark keeps working
        // after the settle (an audit every 12 real seconds), and a job
        // started since the first reading may already have its completion
        // message stored.
        let sent = sent_keys(&self.sim.truth().await);
        let extra: Vec<_> = stored
            .iter()
            .filter(|k| !expected.contains(k) && !sent.contains(k))
            .collect();
        let unexpected = expected.iter().any(|k| !stored.contains(k)) || !extra.is_empty();
        if unexpected {
            let missing: Vec<_> = expected.iter().filter(|k| !stored.contains(k)).collect();
            panic!(
                "{scenario}: Postgres holds exactly what X delivered, each once; \
                 {} stored, {} delivered; delivered but not stored: {missing:?}; stored but not delivered: {extra:?}",
                stored.len(),
                expected.len()
            );
        }
        let dead: Vec<(Vec<u8>, String, String)> =
            sqlx::query_as("SELECT raw, error_kind, reason FROM dead_letters")
                .fetch_all(&self.stack.db.pool)
                .await
                .expect("dead letters");
        for poison in &self.poison {
            let kept = dead.iter().find(|(raw, _, _)| raw == poison);
            assert!(
                kept.is_some_and(|(_, kind, reason)| (kind == "rejected_by_database"
                    && reason.starts_with("SQLSTATE "))
                    || kind == "nul_character"),
                "{scenario}: a poison record is a dead letter with its bytes and reason: {kept:?}"
            );
        }
        let others = dead
            .iter()
            .filter(|(raw, _, _)| !self.poison.contains(raw))
            .count();
        assert_eq!(others, 0, "{scenario}: no dead letters");
        let expired: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as(
                "SELECT window_from, window_to FROM replay_windows WHERE state = 'expired' AND kind = 'gap'",
            )
            .fetch_all(&self.stack.db.pool)
            .await
            .expect("expired windows");
        let expired_minutes: i64 = expired.iter().map(|(f, t)| (*t - *f).num_minutes()).sum();

        let lost: Vec<&Value> = truth
            .iter()
            .filter(|owed| {
                owed["delivered_live"] != true
                    && owed["delivered_by_replay"] != true
                    && owed["kind"] != "replay_job_status"
            })
            .collect();
        match expect {
            Expect::NothingLost => {
                assert_eq!(expired_minutes, 0, "{scenario}: no window aged out");
                assert!(lost.is_empty(), "{scenario}: nothing lost");
            }
            Expect::AgedOut => {
                for owed in &lost {
                    let at: chrono::DateTime<chrono::Utc> = owed["created_at"]
                        .as_str()
                        .and_then(|t| t.parse().ok())
                        .expect("created_at");
                    if !expired.iter().any(|(f, t)| *f <= at && at < *t) {
                        let beats: Vec<(String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
                            "SELECT replica_id, covered_from, covered_to, refused FROM coverage_heartbeats
                             WHERE covered_to > $1 - interval '30 minutes' AND covered_from < $1 + interval '30 minutes' ORDER BY covered_from",
                        )
                        .bind(at)
                        .fetch_all(&self.stack.db.pool)
                        .await
                        .expect("heartbeats");
                        let windows: Vec<(String, String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
                            sqlx::query_as("SELECT kind, state, window_from, window_to FROM replay_windows ORDER BY window_from")
                                .fetch_all(&self.stack.db.pool)
                                .await
                                .expect("windows");
                        panic!(
                            "{scenario}: lost at {at} outside every window marked expired: {owed}\nheartbeats around it: {beats:?}\nwindows: {windows:?}"
                        );
                    }
                }
            }
        }
        // What reached Postgres: every delivery, and what was stored though
        // X never saw it succeed.
        let stored_undelivered: std::collections::HashSet<u64> = attempted_undelivered_keys(&truth)
            .iter()
            .filter(|(_, key)| stored.contains(key))
            .map(|(seq, _)| *seq)
            .collect();
        let (relationships, deletions, revoked) = expected_state(truth.iter().filter(|o| {
            o["delivered"] == true
                || o["seq"]
                    .as_u64()
                    .is_some_and(|seq| stored_undelivered.contains(&seq))
        }));
        let stored_relationships: Vec<RelationshipState> = sqlx::query_as(
            "SELECT relationship, source_id, target_id, active FROM relationships ORDER BY 1, 2, 3",
        )
        .fetch_all(&self.stack.db.pool)
        .await
        .expect("relationships");
        if self.relationships_comparable {
            assert_eq!(
                stored_relationships, relationships,
                "{scenario}: relationship state is what the delivered changes lead to"
            );
        }
        let stored_deletions: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT tweet_id FROM tweet_deletions ORDER BY 1")
                .fetch_all(&self.stack.db.pool)
                .await
                .expect("tweet deletions");
        assert_eq!(
            stored_deletions, deletions,
            "{scenario}: deletions are the delivered ones"
        );
        // Every stored post that was deleted is marked so, whichever batch
        // (of two writing at once) came first; no other post is.
        let marked: Vec<String> = sqlx::query_scalar(
            "SELECT tweet_id FROM tweets WHERE deleted_at IS NOT NULL ORDER BY 1",
        )
        .fetch_all(&self.stack.db.pool)
        .await
        .expect("deleted posts");
        let stored_and_deleted: Vec<String> =
            sqlx::query_scalar("SELECT tweet_id FROM tweets WHERE tweet_id = ANY($1) ORDER BY 1")
                .bind(&deletions)
                .fetch_all(&self.stack.db.pool)
                .await
                .expect("stored posts");
        assert_eq!(
            marked, stored_and_deleted,
            "{scenario}: tweets.deleted_at is set on exactly the deleted posts"
        );
        // Compliance: every copy of a deleted post, in any event, at any
        // depth, for any account, is erased (found here by walking every
        // stored payload, not through the index the erasure uses).
        let deleted: std::collections::BTreeSet<&str> =
            deletions.iter().map(String::as_str).collect();
        let last_unerased = std::sync::Mutex::new(Vec::new());
        let erased = tokio::time::timeout(
            WAIT,
            eventually(WAIT * 2, "every copy of a deleted post erased", || async {
                let payloads: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT id, payload::text FROM events WHERE payload IS NOT NULL",
                )
                .fetch_all(&self.stack.db.pool)
                .await
                .ok()?;
                let unerased: Vec<(i64, String)> = payloads
                    .iter()
                    .filter_map(|(id, text)| {
                        let value: Value = serde_json::from_str(text).ok()?;
                        let mut found = Vec::new();
                        unerased_posts(&value, &deleted, &mut found);
                        Some(
                            found
                                .into_iter()
                                .map(|post| (*id, post))
                                .collect::<Vec<_>>(),
                        )
                    })
                    .flatten()
                    .collect();
                let done = unerased.is_empty();
                *last_unerased.lock().unwrap_or_else(|p| p.into_inner()) = unerased;
                done.then_some(())
            }),
        )
        .await;
        assert!(
            erased.is_ok(),
            "{scenario}: (event id, deleted post) copies never erased: {:?}",
            last_unerased.lock().unwrap_or_else(|p| p.into_inner())
        );
        let erased_copies = self
            .stack
            .db
            .count("SELECT count(*) FROM event_posts WHERE erased")
            .await;
        // A follow, block or mute X delivered in both envelopes (or resent
        // without a time) is one change in relationship_events once the
        // maintenance has run: no undated change repeats the state before it.
        let repeated = tokio::time::timeout(
            WAIT,
            eventually(WAIT * 2, "no relationship change stored twice", || async {
                let repeated = self
                    .stack
                    .db
                    .count(
                        "SELECT count(*) FROM (
                             SELECT undated, active, lag(active) OVER (
                                 PARTITION BY relationship, source_id, target_id
                                 ORDER BY event_time, active DESC) AS before
                             FROM relationship_events) e
                         WHERE undated AND before = active",
                    )
                    .await;
                (repeated == 0).then_some(())
            }),
        )
        .await;
        assert!(
            repeated.is_ok(),
            "{scenario}: an undated relationship change repeating the state before it was never dropped"
        );
        let undated_changes = self
            .stack
            .db
            .count("SELECT count(*) FROM relationship_events WHERE undated")
            .await;
        let stored_revoked: Vec<Revoked> = sqlx::query_as(
            "SELECT user_id, revoked_at FROM subscriptions WHERE revoked_at IS NOT NULL ORDER BY 1",
        )
        .fetch_all(&self.stack.db.pool)
        .await
        .expect("revoked subscriptions");
        assert_eq!(
            stored_revoked, revoked,
            "{scenario}: revoked subscriptions are the delivered revokes"
        );
        let attempts = |owed: &Value, ok: bool| {
            owed["attempts"]
                .as_array()
                .map(|a| a.iter().filter(|t| (t["ok"] == true) == ok).count())
                .unwrap_or(0) as u64
        };
        let duplicates: u64 = truth
            .iter()
            .map(|owed| attempts(owed, true).saturating_sub(1))
            .sum();
        let failed_attempts: u64 = truth.iter().map(|owed| attempts(owed, false)).sum();
        let (gap_windows, audit_windows, recovered_by_audits) = self.windows().await;
        let row = json!({
            "scenario": scenario,
            "owed": summary["owed"],
            "delivered_live": summary["delivered_live"],
            "recovered_by_replay": summary["delivered_by_replay_only"],
            "duplicates_absorbed": duplicates,
            "x_failed_attempts": failed_attempts,
            "lost": summary["missing"],
            "expired_minutes": expired_minutes,
            "gap_windows": gap_windows,
            "audit_windows": audit_windows,
            "recovered_by_audits": recovered_by_audits,
            "stored": expected.len(),
            "relationships": relationships.len(),
            "deletions": deletions.len(),
            "erased_copies": erased_copies,
            "undated_changes": undated_changes,
            "revokes": revoked.len(),
            "settle_seconds": (settle_seconds * 10.0).round() / 10.0,
        });
        eprintln!("chaos: {row}");
        if let Ok(path) = std::env::var("AAA_CHAOS_REPORT") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("chaos report");
            writeln!(file, "{row}").expect("write chaos report");
        }
        let events_by_kind: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT kind, count(*), count(*) FILTER (WHERE context ? 'xaa') FROM events GROUP BY kind ORDER BY kind",
        )
        .fetch_all(&self.stack.db.pool)
        .await
        .expect("events by kind");
        let lost_count = lost.len();
        let watermark_admin = format!("http://{}", self.watermark.addr("admin").await);
        let expired_counted = metric(&watermark_admin, "aaa_watermark_expired_minutes_total").await;
        let receivers_missed = aaa_testkit::metric_where(&watermark_admin, |l| {
            l.starts_with("aaa_watermark_replay_jobs_total")
                && l.contains("outcome=\"receivers_missed\"")
        })
        .await;
        Settled {
            truth,
            events_by_kind,
            recovered_by_replay: summary["delivered_by_replay_only"].as_i64().unwrap_or(0),
            duplicates_absorbed: duplicates,
            failed_attempts,
            gap_windows,
            audit_windows,
            recovered_by_audits,
            lost: lost_count,
            expired_minutes,
            expired_counted,
            receivers_missed,
            undated_changes,
        }
    }
}

/// Kills the watermark replica that submitted a replay while the job runs,
/// and starts another.
pub async fn kill_watermark_mid_replay(run: &mut Run) {
    run.sim.set_faults(json!({"replay_delay_ms": 20})).await;
    run.stack.replay_in_flight(WAIT).await;
    run.watermark.kill();
    run.watermark = run.stack.spawn_watermark(&run.sim, "watermark-b");
}

/// (owed seq, key) of what X attempted to deliver and never saw succeed.
fn attempted_undelivered_keys(truth: &[Value]) -> Vec<(u64, Key)> {
    truth
        .iter()
        .filter(|o| o["delivered"] != true)
        .filter(|o| o["attempts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|o| Some((o["seq"].as_u64()?, keys_of(o))))
        .flat_map(|(seq, keys)| keys.into_iter().map(move |key| (seq, key)))
        .collect()
}

/// The keys of what X sent: every owed delivery it attempted, or is
/// attempting (pending: its answer may not be recorded yet).
fn sent_keys(truth: &[Value]) -> std::collections::HashSet<Key> {
    truth
        .iter()
        .filter(|o| o["pending"] == true || o["attempts"].as_array().is_some_and(|a| !a.is_empty()))
        .flat_map(keys_of)
        .collect()
}

/// (relationship, source, target, active).
type RelationshipState = (String, String, String, bool);
/// (user, latest revocation).
type Revoked = (String, chrono::DateTime<chrono::Utc>);

/// The relationship state and the
/// deleted tweets that the delivered activities lead to, from ground truth:
/// each delivered body normalized, the latest change per relationship.
fn expected_state<'a>(
    arrived: impl Iterator<Item = &'a Value>,
) -> (Vec<RelationshipState>, Vec<String>, Vec<Revoked>) {
    use aaa_events::normalize::{Record, current_relationships, normalize};
    let mut changes = Vec::new();
    let mut deleted = std::collections::BTreeSet::new();
    let mut revoked = std::collections::BTreeMap::new();
    for owed in arrived {
        let body = owed["body"].to_string();
        let Ok(envelope) = aaa_events::parse_envelope(body.as_bytes()) else {
            continue;
        };
        let created_at = owed["created_at"]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok());
        for activity in envelope.activities.iter().flatten() {
            // XAA leaves some events undated; the consumer dates them on receipt.
            let mut activity = activity.clone();
            if let Some(at) = created_at {
                activity.assume_received_at(at);
            }
            let records = normalize(
                &activity,
                envelope.for_user_id.as_deref(),
                &envelope.context,
            )
            .unwrap_or_default();
            for record in records {
                match record {
                    Record::Relationship(row) => changes.push(row),
                    Record::TweetDeletion(row) => {
                        deleted.insert(row.tweet_id);
                    }
                    Record::Revoke(row) => {
                        let latest = revoked.entry(row.user_id).or_insert(row.revoked_at);
                        *latest = row.revoked_at.max(*latest);
                    }
                    _ => {}
                }
            }
        }
    }
    let mut relationships: Vec<_> = current_relationships(changes, |r| r)
        .into_iter()
        .map(|r| {
            (
                r.relationship.as_str().to_owned(),
                r.source_id,
                r.target_id,
                r.active,
            )
        })
        .collect();
    relationships.sort();
    (
        relationships,
        deleted.into_iter().collect(),
        revoked.into_iter().collect(),
    )
}

/// Post objects in `value` (a `text` and an `id_str` or `id`) whose id is in
/// `deleted` and that are not marked erased.
fn unerased_posts(
    value: &Value,
    deleted: &std::collections::BTreeSet<&str>,
    found: &mut Vec<String>,
) {
    match value {
        Value::Object(object) => {
            if object.contains_key("text") && object.get("aaa_erased") != Some(&Value::Bool(true)) {
                for key in ["id_str", "id"] {
                    let id = match object.get(key) {
                        Some(Value::String(id)) => id.clone(),
                        Some(Value::Number(id)) => id.to_string(),
                        _ => continue,
                    };
                    if deleted.contains(id.as_str()) {
                        found.push(id);
                        break;
                    }
                }
            }
            for child in object.values() {
                unerased_posts(child, deleted, found);
            }
        }
        Value::Array(items) => {
            for item in items {
                unerased_posts(item, deleted, found);
            }
        }
        _ => {}
    }
}
