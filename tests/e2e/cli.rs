//! The operator's view: every `aaa webhooks|subscriptions|replay` command run
//! as a process against the X simulator, with the real pipeline behind the
//! webhook, and every refusal reaching the operator as one clear line with
//! the right exit code (2 user error, 3 X refused, 4 X unreachable).

use std::process::Command;
use std::time::Duration;

use aaa_common::Clock;
use aaa_testkit::{SIM_BEARER, SimProcess, Stack, StackOptions, eventually};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aaa");
const WAIT: Duration = Duration::from_secs(60);

struct Operator {
    env: Vec<(String, String)>,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// A refusal: exactly one line on stderr, naming `what`.
    fn refused(&self, code: i32, what: &str) {
        assert_eq!(self.code, code, "exit code; stderr: {}", self.stderr);
        assert_eq!(
            self.stderr.trim().lines().count(),
            1,
            "one line: {}",
            self.stderr
        );
        assert!(self.stderr.contains(what), "{what} not in: {}", self.stderr);
    }
}

impl Operator {
    fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut command = Command::new(BIN);
        command.args(args).env("AAA_LOG", "warn");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        let output = command.output().expect("run aaa");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn ok(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let run = self.run(args, extra);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        run
    }
}

fn minute(t: DateTime<Utc>) -> String {
    aaa_replay_window::format_minute(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_webhooks_subscriptions_and_replays_from_the_cli() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let real_epoch = Utc::now();
    let epoch = real_epoch.to_rfc3339();
    // Ten simulated minutes per real second, shared by the simulator and the CLI.
    let clock = Clock::Scaled {
        real_epoch,
        sim_epoch: real_epoch,
        speed: 600.0,
    };
    let sim = SimProcess::start(
        BIN.as_ref(),
        &stack.secret,
        &[
            "--clock-speed",
            "600",
            "--clock-real-epoch",
            &epoch,
            "--provisioned-count",
            "3",
            "--interaction-share",
            "0",
            "--revoke-share",
            "0",
            "--webhooks-replay-limit",
            "3",
        ],
    )
    .await;
    let accounts = sim.accounts().await;
    let token = |i: usize, field: &str| accounts["accounts"][i][field].as_str().unwrap().to_owned();
    let operator = Operator {
        env: vec![
            ("AAA_X_API_BASE_URL".into(), sim.url.clone()),
            ("AAA_X_BEARER_TOKEN".into(), SIM_BEARER.into()),
            (
                "AAA_X_CONSUMER_KEY".into(),
                accounts["app"]["consumer_key"].as_str().unwrap().into(),
            ),
            ("AAA_X_CONSUMER_SECRET".into(), stack.secret.clone()),
            ("AAA_X_ACCESS_TOKEN".into(), token(0, "access_token")),
            (
                "AAA_X_ACCESS_TOKEN_SECRET".into(),
                token(0, "access_token_secret"),
            ),
            ("AAA_CLOCK_SPEED".into(), "600".into()),
            ("AAA_CLOCK_REAL_EPOCH".into(), epoch.clone()),
            ("AAA_DATABASE_URL".into(), stack.db.reader_url().await),
            // The watermark's X budget counts the operator's requests.
            (
                "AAA_X_BUDGET_DATABASE_URL".into(),
                stack.db.operator_url().await,
            ),
        ],
    };
    let pool = stack.db.pool.clone();
    let recorded = |endpoint: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM x_api_requests WHERE endpoint = $1")
                .bind(endpoint)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let user = |i: usize| {
        [
            ("AAA_X_ACCESS_TOKEN", token(i, "access_token")),
            ("AAA_X_ACCESS_TOKEN_SECRET", token(i, "access_token_secret")),
        ]
    };
    let as_user = |i: usize, args: &[&str]| {
        let env = user(i);
        operator.run(
            args,
            &[(env[0].0, env[0].1.as_str()), (env[1].0, env[1].1.as_str())],
        )
    };

    // Webhooks.
    let registered = operator
        .ok(
            &[
                "webhooks",
                "register",
                "--url",
                &stack.webhook_url,
                "--json",
            ],
            &[],
        )
        .json();
    let id = registered[0]["id"]
        .as_str()
        .expect("a webhook id")
        .to_owned();
    assert_eq!(registered[0]["valid"], true);
    let lists_before = recorded("webhooks_list").await;
    let listed = operator.ok(&["webhooks", "list"], &[]).stdout;
    assert!(listed.contains(&id) && listed.contains("true"), "{listed}");
    assert_eq!(
        recorded("webhooks_list").await,
        lists_before + 1,
        "an operator's webhook list counts in the watermark's budget"
    );
    assert_eq!(
        operator
            .ok(&["webhooks", "validate", &id, "--json"], &[])
            .json()["valid"],
        true
    );
    // The second webhook of the stack answers CRC with another secret.
    operator
        .run(
            &["webhooks", "register", "--url", &stack.second_webhook_url],
            &[],
        )
        .refused(3, "CrcValidationFailed");
    operator
        .run(&["webhooks", "validate", "42"], &[])
        .refused(3, "WebhookIdInvalid");

    // Subscriptions: three accounts fit, a fourth does not.
    for i in 0..3 {
        assert_eq!(
            as_user(i, &["subscriptions", "add", "--webhook", &id]).code,
            0
        );
    }
    as_user(0, &["subscriptions", "add", "--webhook", &id])
        .refused(3, "DuplicateSubscriptionFailed");
    as_user(3, &["subscriptions", "add", "--webhook", &id]).refused(3, "SubscriptionLimitExceeded");
    assert_eq!(
        operator
            .ok(&["subscriptions", "check", "--webhook", &id, "--json"], &[])
            .json()["subscribed"],
        true
    );
    let users = operator
        .ok(&["subscriptions", "list", "--webhook", &id, "--json"], &[])
        .json();
    assert_eq!(users["user_ids"].as_array().unwrap().len(), 3);
    assert_eq!(
        operator
            .ok(&["subscriptions", "count", "--json"], &[])
            .json()["subscriptions_count_all"],
        "3"
    );

    // Activity flows into Postgres.
    let owed = sim.generate(20).await;
    sim.settled(WAIT).await;
    eventually(WAIT, "the activity in Postgres", || async {
        (stack.db.count("SELECT count(*) FROM events").await == owed as i64).then_some(())
    })
    .await;

    // Replay: refused locally when the window breaks X's rules...
    let now = clock.now();
    let too_recent = operator.run(
        &[
            "replay",
            "submit",
            "--webhook",
            &id,
            "--from",
            &minute(now - TimeDelta::minutes(5)),
            "--to",
            &minute(now),
        ],
        &[],
    );
    too_recent.refused(2, "31 minutes");
    // ... and by X when the clocks disagree (this CLI runs 100 minutes ahead).
    let ahead = (real_epoch - TimeDelta::seconds(10)).to_rfc3339();
    let skewed_now = now + TimeDelta::minutes(100);
    operator
        .run(
            &[
                "replay",
                "submit",
                "--webhook",
                &id,
                "--from",
                &minute(skewed_now - TimeDelta::minutes(40)),
                "--to",
                &minute(skewed_now - TimeDelta::minutes(15)),
            ],
            &[("AAA_CLOCK_REAL_EPOCH", &ahead)],
        )
        .refused(3, "QueryParamInvalid");

    // A real replay of the activity, watched to completion.
    let created: Vec<DateTime<Utc>> = sim
        .truth()
        .await
        .iter()
        .map(|l| l["created_at"].as_str().unwrap().parse().unwrap())
        .collect();
    let from = *created.iter().min().unwrap() - TimeDelta::minutes(1);
    let to = *created.iter().max().unwrap() + TimeDelta::minutes(2);
    eventually(WAIT, "the window to age", || async {
        let now = clock.now();
        (to <= now - TimeDelta::minutes(11) && from <= now - TimeDelta::minutes(32)).then_some(())
    })
    .await;
    let job = operator
        .ok(
            &[
                "replay",
                "submit",
                "--webhook",
                &id,
                "--from",
                &from.to_rfc3339(),
                "--to",
                &minute(to),
                "--json",
            ],
            &[],
        )
        .json();
    let job_id = job["job_id"].as_str().expect("a job id").to_owned();
    let status = eventually(WAIT, "replay_job_status in Postgres", || async {
        let jobs = operator.run(&["replay", "status", "--json"], &[]).json();
        jobs.as_array()?
            .iter()
            .find(|j| j["job_id"] == job_id.as_str())
            .cloned()
    })
    .await;
    assert_eq!(status["job_state"], "Complete");
    assert_eq!(status["window_kind"], "operator", "{status}");
    // Status comes from replay_jobs: it outlives the raw message's payload
    // (event retention drops it).
    sqlx::query("UPDATE events SET payload = NULL WHERE kind = 'replay_job_status'")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let table = operator.ok(&["replay", "status"], &[]).stdout;
    assert!(
        table.contains(&job_id) && table.contains("Complete"),
        "{table}"
    );
    // Replayed copies changed nothing: the same rows, plus the status message.
    assert_eq!(
        stack.db.count("SELECT count(*) FROM events").await,
        owed as i64 + 1
    );

    // One job per webhook, and the replay endpoint's rate limit.
    sim.set_faults(json!({"next_replay": "never_finish"})).await;
    let window = [
        "--webhook",
        id.as_str(),
        "--from",
        &minute(from),
        "--to",
        &minute(to),
    ];
    // A --to just 10 minutes ago, seconds and all, is the minute holding it
    // (X checks the minute it receives; rounding up was refused).
    let just_old_enough = clock.now() - TimeDelta::minutes(10);
    let sent = operator.ok(
        &[
            "replay",
            "submit",
            "--webhook",
            &id,
            "--from",
            &minute(from),
            "--to",
            &just_old_enough.to_rfc3339(),
        ],
        &[],
    );
    let to_minute = just_old_enough.format("%Y%m%d%H%M").to_string();
    assert!(
        sent.stderr.contains(&format!("to_date={to_minute}")),
        "{}",
        sent.stderr
    );
    operator
        .run(&[&["replay", "submit"], &window[..]].concat(), &[])
        .refused(3, "ReplayConflictError");
    let again = [&["replay", "submit"], &window[..]].concat();
    // Three calls per 15 simulated minutes (1.5 s real): a quick fourth is
    // refused. Repeated a few times so a slow machine cannot spread them out
    // of the window.
    let limited = (0..10)
        .map(|_| operator.run(&again, &[]))
        .find(|run| run.stderr.contains("rate limited"))
        .expect("the replay endpoint's rate limit");
    limited.refused(3, "rate limited");
    // Accepted, conflicting and rate-limited submissions alike.
    assert!(
        recorded("replay_submit").await >= 4,
        "every replay request an operator sent is in the watermark's budget"
    );

    // Removing a subscription.
    let user1 = token(1, "user_id");
    operator.ok(
        &[
            "subscriptions",
            "remove",
            "--webhook",
            &id,
            "--user",
            &user1,
        ],
        &[],
    );
    operator
        .run(
            &[
                "subscriptions",
                "remove",
                "--webhook",
                &id,
                "--user",
                &user1,
            ],
            &[],
        )
        .refused(3, "SubscriptionNotFound");

    // Whose fault: bad credentials (X refused), none at all (user error), no X (transport).
    operator
        .run(&["webhooks", "list"], &[("AAA_X_BEARER_TOKEN", "wrong")])
        .refused(3, "credentials");
    operator
        .run(&["webhooks", "list"], &[("AAA_X_BEARER_TOKEN", "")])
        .refused(2, "AAA_X_BEARER_TOKEN");
    operator
        .run(
            &["webhooks", "list"],
            &[("AAA_X_API_BASE_URL", "http://127.0.0.1:1")],
        )
        .refused(4, "cannot reach X");
    let json_error = operator.run(&["webhooks", "validate", "42", "--json"], &[]);
    assert_eq!(json_error.code, 3);
    let error: Value = serde_json::from_str(json_error.stderr.trim()).unwrap();
    assert_eq!(error["reason"], "WebhookIdInvalid");
    assert!(
        error["body"].as_str().unwrap().contains("WebhookIdInvalid"),
        "raw body kept for the operator"
    );

    // Delete.
    operator.ok(&["webhooks", "delete", &id], &[]);
    assert!(!operator.ok(&["webhooks", "list"], &[]).stdout.contains(&id));
}

/// X Activity API subscriptions from the CLI, and the migration of a
/// webhook's Account Activity accounts onto them: a dry run that changes
/// nothing, a run that creates exactly the plan, a second run that finds
/// nothing to do; listing follows X's pages; update, delete and bulk delete,
/// with per-id failures reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xaa_subscriptions_and_the_migration_from_the_cli() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let sim = stack
        .start_sim(&["--accounts", "5", "--activity-page-limit", "25"])
        .await;
    let operator = Operator {
        env: vec![
            ("AAA_X_API_BASE_URL".into(), sim.url.clone()),
            ("AAA_X_BEARER_TOKEN".into(), SIM_BEARER.into()),
        ],
    };
    let webhook = stack.webhook_id.as_str();
    let list = || {
        operator
            .ok(&["subscriptions", "activity", "list", "--json"], &[])
            .json()
    };
    let per_account = aaa_xapi::migrated_event_types().len();

    let dry = operator.ok(
        &[
            "subscriptions",
            "migrate",
            "--webhook",
            webhook,
            "--dry-run",
            "--json",
        ],
        &[],
    );
    let plan = dry.json()["plan"].as_array().cloned().unwrap_or_default();
    assert_eq!(plan.len(), 5 * per_account + 1, "{}", dry.stdout);
    assert!(dry.stderr.contains("dry run"), "{}", dry.stderr);
    assert_eq!(list(), json!([]), "a dry run creates nothing");

    let real = operator.ok(
        &["subscriptions", "migrate", "--webhook", webhook, "--json"],
        &[],
    );
    assert_eq!(real.json()["created"], plan.len(), "{}", real.stdout);
    let all = list();
    let all = all.as_array().expect("a list");
    assert_eq!(all.len(), plan.len(), "every page listed (25 per page)");
    let mut pairs: Vec<(String, String)> = all
        .iter()
        .map(|s| (s["event_type"].to_string(), s["filter"].to_string()))
        .collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), plan.len(), "no pair created twice");
    assert!(all.iter().all(|s| s["webhook_id"] == webhook));

    let again = operator.ok(
        &["subscriptions", "migrate", "--webhook", webhook, "--json"],
        &[],
    );
    assert_eq!(
        again.json()["plan"],
        json!([]),
        "a second run plans nothing"
    );
    assert_eq!(again.json()["created"], 0);
    assert_eq!(list().as_array().map(Vec::len), Some(plan.len()));

    let ids: Vec<String> = all
        .iter()
        .map(|s| s["subscription_id"].as_str().unwrap().to_owned())
        .collect();
    let updated = operator
        .ok(
            &[
                "subscriptions",
                "activity",
                "update",
                &ids[0],
                "--tag",
                "renamed",
                "--json",
            ],
            &[],
        )
        .json();
    assert_eq!(updated["tag"], "renamed");
    operator
        .run(&["subscriptions", "activity", "update", &ids[0]], &[])
        .refused(2, "nothing to update");

    operator.ok(&["subscriptions", "activity", "delete", &ids[0]], &[]);
    let mut rest: Vec<&str> = ids[1..].iter().map(String::as_str).collect();
    rest.push("1999999999999999999");
    let mut args = vec!["subscriptions", "activity", "delete", "--json"];
    args.extend(&rest);
    let bulk = operator.run(&args, &[]);
    assert_ne!(bulk.code, 0, "a failed id is an error");
    let report = bulk.json();
    assert_eq!(
        report["deleted"].as_array().map(Vec::len),
        Some(ids.len() - 1)
    );
    assert_eq!(report["failed"][0][1], "SubscriptionNotFound", "{report}");
    assert_eq!(list(), json!([]));

    operator
        .run(
            &[
                "subscriptions",
                "activity",
                "create",
                "--event-type",
                "mute.mute",
                "--user",
                "1",
                "--direction",
                "inbound",
            ],
            &[],
        )
        .refused(3, "direction is not supported");
    let created = operator
        .ok(
            &[
                "subscriptions",
                "activity",
                "create",
                "--event-type",
                "post.create",
                "--user",
                "1",
                "--tag",
                "posts",
                "--webhook",
                webhook,
                "--json",
            ],
            &[],
        )
        .json();
    assert_eq!(created["filter"], json!({"user_id": "1"}));
    operator
        .run(
            &[
                "subscriptions",
                "activity",
                "create",
                "--event-type",
                "post.create",
                "--user",
                "1",
            ],
            &[],
        )
        .refused(3, "DuplicateSubscriptionFailed");

    // Qualifiers, and a tag by default: the event type and filter.
    let qualified = operator
        .ok(
            &[
                "subscriptions",
                "activity",
                "create",
                "--event-type",
                "post.reply.create",
                "--user",
                "1",
                "--qualifier",
                "post_id=42",
                "--qualifier",
                "conversation_type=reply",
                "--json",
            ],
            &[],
        )
        .json();
    assert_eq!(
        qualified["filter"],
        json!({"user_id": "1", "qualifiers": {"post_id": "42", "conversation_type": "reply"}})
    );
    assert_eq!(
        qualified["tag"],
        "post.reply.create:qualifiers.conversation_type=reply,qualifiers.post_id=42,user_id=1"
    );
    let malformed = operator.run(
        &[
            "subscriptions",
            "activity",
            "create",
            "--event-type",
            "post.create",
            "--qualifier",
            "no-equals",
        ],
        &[],
    );
    assert!(
        malformed.code == 2 && malformed.stderr.contains("KEY=VALUE"),
        "{}",
        malformed.stderr
    );
    // A filter key this version does not know, created at X by someone
    // else, is listed as X holds it.
    let response = sim
        .api(reqwest::Method::POST, "/2/activity/subscriptions")
        .json(&json!({"event_type": "like.create",
                      "filter": {"user_id": "2", "future_key": {"nested": true}}, "tag": "t"}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    let listed = list();
    let future = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["event_type"] == "like.create")
        .expect("listed");
    assert_eq!(
        future["filter"],
        json!({"user_id": "2", "future_key": {"nested": true}})
    );
}

/// The migration of docs/xaa.md, rehearsed on a running pipeline: live
/// Account Activity traffic; `aaa subscriptions migrate` adds the XAA
/// subscriptions (X then delivers both envelopes); the AAA subscriptions
/// are removed account by account (XAA only from then on). Nothing is lost,
/// and a post delivered in both envelopes is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_deployment_migrates_from_aaa_to_xaa_without_loss() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let sim = stack.start_sim(aaa_testkit::SMALL_SIM_ARGS).await;
    let operator = Operator {
        env: vec![
            ("AAA_X_API_BASE_URL".into(), sim.url.clone()),
            ("AAA_X_BEARER_TOKEN".into(), SIM_BEARER.into()),
        ],
    };
    let webhook = stack.webhook_id.as_str();
    let traffic = stack.start_traffic(&sim, WAIT).await;
    let stored_from_xaa = || async {
        stack
            .db
            .count("SELECT count(*) FROM events WHERE context ? 'xaa'")
            .await
    };
    assert_eq!(stored_from_xaa().await, 0, "AAA only before the migration");
    let check = || {
        let run = operator.ok(
            &[
                "subscriptions",
                "migrate-check",
                "--webhook",
                webhook,
                "--json",
            ],
            &[],
        );
        let report = run.json();
        let products: std::collections::BTreeSet<String> = report["accounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a["product"].as_str().unwrap_or_default().to_owned())
            .collect();
        let scopes: std::collections::BTreeSet<String> = report["accounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a["needs_user_scopes"].to_string())
            .collect();
        (report["ready"] == true, products, scopes, run.stderr)
    };
    let (ready, products, scopes, said) = check();
    assert!(!ready && said.contains("would lose activity"), "{said}");
    assert_eq!(products, ["aaa".to_owned()].into(), "{said}");
    // X's reference for POST /2/activity/subscriptions: DMs need dm.read,
    // likes like.read, mutes mute.read, blocks block.read, from the
    // account's own token; every account misses all four.
    assert_eq!(
        scopes,
        [serde_json::json!(["block.read", "dm.read", "like.read", "mute.read"]).to_string()].into(),
        "{said}"
    );
    assert!(said.contains("needs_user_scopes"), "{said}");

    let migrated = operator.ok(
        &["subscriptions", "migrate", "--webhook", webhook, "--json"],
        &[],
    );
    let accounts = migrated.json()["accounts"].as_u64().unwrap_or_default();
    assert!(accounts > 0, "{}", migrated.stdout);
    eventually(WAIT, "XAA copies stored during the overlap", || async {
        (stored_from_xaa().await > 20).then_some(())
    })
    .await;
    assert!(
        migrated.stderr.contains("private event types"),
        "{}",
        migrated.stderr
    );
    let (ready, products, scopes, said) = check();
    assert!(ready && said.contains("would lose nothing"), "{said}");
    assert_eq!(products, ["aaa+xaa".to_owned()].into(), "{said}");
    assert_eq!(scopes, ["[]".to_owned()].into(), "{said}");

    let users = operator
        .ok(
            &["subscriptions", "list", "--webhook", webhook, "--json"],
            &[],
        )
        .json();
    for user in users["user_ids"].as_array().into_iter().flatten() {
        let user = user.as_str().expect("a user id");
        operator.ok(
            &[
                "subscriptions",
                "remove",
                "--webhook",
                webhook,
                "--user",
                user,
            ],
            &[],
        );
    }
    let (_, products, _, said) = check();
    assert_eq!(products, ["xaa".to_owned()].into(), "{said}");
    let after_switch = stored_from_xaa().await;
    eventually(WAIT, "XAA-only traffic stored", || async {
        (stored_from_xaa().await > after_switch + 20).then_some(())
    })
    .await;
    traffic.stop().await;
    sim.settled(WAIT).await;

    let expected = aaa_testkit::delivered_keys(&sim).await;
    eventually(WAIT, "everything X delivered stored, once", || async {
        (aaa_testkit::stored_keys(&stack.db).await == expected).then_some(())
    })
    .await;
    let summary = sim.summary().await;
    assert_eq!(summary["missing"], 0, "{summary}");
    let truth = sim.truth().await;
    let mut posts: Vec<(u64, String)> = truth
        .iter()
        .filter(|o| o["kind"] == "tweet_create_events" && o["delivered"] == true)
        .map(|o| {
            (
                o["activity_id"].as_u64().unwrap_or_default(),
                o["for_user_id"].to_string(),
            )
        })
        .collect();
    let owed_posts = posts.len();
    posts.sort();
    posts.dedup();
    assert!(
        owed_posts > posts.len(),
        "some posts were owed in both envelopes"
    );
    assert_eq!(
        stack
            .db
            .count("SELECT count(*) FROM events WHERE kind = 'tweet_create_events'")
            .await,
        posts.len() as i64,
        "each post stored once per account, whichever envelope came first"
    );

    // Every XAA event is routed back to its subscription by tag once an
    // operator listed the subscriptions with the database at hand, and the
    // listing says what each stored.
    let recording = Operator {
        env: [
            operator.env.clone(),
            vec![(
                "AAA_X_BUDGET_DATABASE_URL".into(),
                stack.db.operator_url().await,
            )],
        ]
        .concat(),
    };
    let listed = recording
        .ok(&["subscriptions", "activity", "list", "--json"], &[])
        .json();
    let listed = listed.as_array().expect("a list");
    assert!(!listed.is_empty());
    let stored_per_listing: i64 = listed
        .iter()
        .map(|s| {
            s["stored_events_24h"]
                .as_i64()
                .expect("a count per subscription")
        })
        .sum();
    let unrouted = stack
        .db
        .count("SELECT count(*) FROM v_xaa_events WHERE subscription_id IS NULL")
        .await;
    assert_eq!(unrouted, 0, "every XAA event has its subscription");
    assert_eq!(
        stored_per_listing,
        stack.db.count("SELECT count(*) FROM v_xaa_events").await,
        "the listing counts every stored XAA event under its subscription"
    );
    let table = recording
        .ok(&["subscriptions", "activity", "list"], &[])
        .stdout;
    assert!(table.contains("events_24h"), "{table}");
    let checked = recording
        .ok(
            &[
                "subscriptions",
                "migrate-check",
                "--webhook",
                webhook,
                "--json",
            ],
            &[],
        )
        .json();
    let seen_on_xaa = checked["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["last_xaa_event_at"].is_string())
        .count();
    assert!(seen_on_xaa > 0, "{checked}");
}

/// Kafka properties may carry SASL passwords: `--help` does not show them,
/// and a malformed one is named by position, never echoed.
#[test]
fn kafka_property_values_are_never_printed() {
    const SECRET: &str = "sasl.password=hunter2,with-a-comma";
    for command in ["receiver", "consumer", "watermark"] {
        let help = Command::new(BIN)
            .args([command, "--help"])
            .env("AAA_KAFKA_PROPERTIES", SECRET)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(help.status.success(), "{command} --help");
        assert!(text.contains("AAA_KAFKA_PROPERTIES"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "{command} --help shows the secret"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("consumer-secret");
    std::fs::write(&secret, "s").unwrap();
    let webhooks = dir.path().join("webhooks.toml");
    std::fs::write(
        &webhooks,
        format!(
            "[[webhooks]]\nid = \"1\"\npath = \"/x\"\nconsumer_secret_files = [{:?}]\n",
            secret.display().to_string()
        ),
    )
    .unwrap();
    let refused = Command::new(BIN)
        .args([
            "receiver",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--webhooks-file")
        .arg(&webhooks)
        .env("AAA_KAFKA_PROPERTIES", "hunter2-without-equals")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "{all}");
    assert!(all.contains("invalid Kafka property (entry 1)"), "{all}");
    assert!(
        !all.contains("hunter2"),
        "the error echoes the value: {all}"
    );
}

/// Limits that would let an outsider hurt the receiver are refused at
/// start: a body limit so small that a CRC token counts as an authentic
/// oversized delivery (a replay anyone could trigger), and slots × body
/// limit over the memory set aside for bodies (every slot filled with a
/// full body must not get the pod killed).
#[test]
fn the_receiver_refuses_limits_an_outsider_could_exploit() {
    let dir = tempfile::tempdir().unwrap();
    let webhooks = dir.path().join("webhooks.toml");
    std::fs::write(&webhooks, "").unwrap();
    let start = |env: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        command
            .args([
                "receiver",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--webhooks-file")
            .arg(&webhooks)
            .env("AAA_LOG", "warn");
        for (k, v) in env {
            command.env(k, v);
        }
        let output = command.output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), all)
    };
    let (ok, all) = start(&[("AAA_MAX_BODY_BYTES", "200")]);
    assert!(!ok, "{all}");
    assert!(
        all.contains("AAA_MAX_BODY_BYTES") || all.contains("max-body-bytes"),
        "{all}"
    );
    assert!(all.contains("4096"), "the floor is named: {all}");

    let (ok, all) = start(&[
        ("AAA_MAX_CONCURRENT_REQUESTS", "1024"),
        ("AAA_MAX_BODY_BYTES", "1048576"),
    ]);
    assert!(!ok, "{all}");
    assert!(all.contains("AAA_BODY_BUFFER_BYTES"), "{all}");
    assert!(
        all.contains("1073741824 bytes"),
        "the product is named: {all}"
    );
}
