//! Scenario 3: the whole pipeline (receiver → broker → consumer → Postgres)
//! at fixed offered rates, open loop: deliveries leave on schedule whether or
//! not earlier ones were answered, as X sends them. Latency is from sending
//! to the row being visible to a reader (polled every 10 ms).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aaa_testkit::{Key, Stack, StackOptions, keys_in};

use crate::stats::{Latency, Recorder};
use crate::{Error, Settings, procfs};

/// Deliveries in flight at most; beyond it the generator sheds (counted).
const MAX_IN_FLIGHT: usize = 2048;
const TICK: Duration = Duration::from_millis(5);
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, serde::Serialize)]
pub struct RateReport {
    pub offered_per_second: u64,
    pub sent: u64,
    /// Not sent because MAX_IN_FLIGHT deliveries were still unanswered.
    pub shed: u64,
    pub achieved_per_second: f64,
    /// Answers that were not 2xx, by status (`error`: no answer).
    pub refusals: std::collections::BTreeMap<String, u64>,
    pub answered_ok: u64,
    pub failed: u64,
    /// Events expected from what was answered 200, and how many never
    /// became visible within the wait (must be 0).
    pub events: usize,
    pub missing: usize,
    /// Stored, but not seen by the poller within 60 s of the last send (no
    /// latency known; the rate is then not sustained).
    pub unobserved_but_stored: usize,
    pub latency: Latency,
    /// Median latency of the first and the second half of the run: growing
    /// lag shows as a second half far behind the first.
    pub p50_first_half_ms: f64,
    pub p50_second_half_ms: f64,
    /// From the last send to the last row visible.
    pub drain_seconds: f64,
    pub sustained: bool,
    /// What the receiver saw during this rate.
    pub receiver: ReceiverView,
}

/// The receiver's own account of a rate, from its /metrics before and after:
/// why first attempts were refused, and how long the broker took to
/// acknowledge (each delivery holds one of the receiver's slots meanwhile).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReceiverView {
    /// Turned away at the concurrency limit (every slot taken).
    pub shed: f64,
    /// Answered 503 because the broker did not acknowledge.
    pub broker_refused: f64,
    /// Mean time from produce to the broker's acknowledgement.
    pub produce_mean_ms: f64,
    /// Share of acknowledgements that took longer than 50 ms.
    pub produce_over_50ms: f64,
}

/// Running totals on the receiver's /metrics page.
#[derive(Debug, Default, Clone, Copy)]
struct ReceiverTotals {
    shed: f64,
    broker_refused: f64,
    produce_seconds: f64,
    produced: f64,
    produced_over_50ms: f64,
}

impl ReceiverTotals {
    async fn scrape(admin: &str) -> ReceiverTotals {
        ReceiverTotals::from_metrics(&crate::consumer::metrics_page(admin).await)
    }

    fn from_metrics(text: &str) -> ReceiverTotals {
        use crate::consumer::series_sum;
        // The receiver's metric names (docs/architecture.md).
        const PRODUCE_SECONDS: &str = "aaa_receiver_produce_duration_seconds";
        const REQUESTS: &str = "aaa_receiver_requests_total";
        const SHED: &str = "aaa_receiver_requests_shed_total";
        let produced = series_sum(text, &format!("{PRODUCE_SECONDS}_count"));
        let bucket = format!("{PRODUCE_SECONDS}_bucket");
        let within_50ms = aaa_testkit::sum_samples(text, |l| {
            l.starts_with(&bucket) && l.contains("le=\"0.05\"")
        });
        ReceiverTotals {
            shed: series_sum(text, SHED),
            broker_refused: aaa_testkit::sum_samples(text, |l| {
                l.starts_with(REQUESTS) && l.contains("outcome=\"broker_unavailable\"")
            }),
            produce_seconds: series_sum(text, &format!("{PRODUCE_SECONDS}_sum")),
            produced,
            produced_over_50ms: produced - within_50ms,
        }
    }
}

impl ReceiverView {
    fn between(before: ReceiverTotals, after: ReceiverTotals) -> ReceiverView {
        let produced = after.produced - before.produced;
        let share = |n: f64| if produced > 0.0 { n / produced } else { 0.0 };
        ReceiverView {
            shed: after.shed - before.shed,
            broker_refused: after.broker_refused - before.broker_refused,
            produce_mean_ms: share(after.produce_seconds - before.produce_seconds) * 1e3,
            produce_over_50ms: share(after.produced_over_50ms - before.produced_over_50ms),
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct E2eReport {
    pub duration_seconds: u64,
    pub rates: Vec<RateReport>,
    pub max_sustained_per_second: Option<u64>,
    pub receiver_memory: Option<procfs::Memory>,
    pub consumer_memory: Option<procfs::Memory>,
}

struct Prepared {
    body: Vec<u8>,
    signature: String,
    keys: Vec<Key>,
}

pub async fn run(settings: &Settings, rates: &[u64]) -> Result<E2eReport, Error> {
    let stack = Stack::start(
        &settings.aaa_bin.display().to_string(),
        // The consumer's batch as deployed (the test stack's is 100), and
        // the raw topic's partitions as asked.
        StackOptions {
            partitions: settings.e2e_partitions,
            batch_max_records: settings.consumer_batch,
            ..StackOptions::default()
        },
    )
    .await;
    let start = chrono::DateTime::UNIX_EPOCH + chrono::TimeDelta::days(20_000);
    let mut generator = aaa_sim::generate::Generator::new(11, 1000, start);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut seen: std::collections::HashSet<Key> = Default::default();
    let mut reports = Vec::new();
    let mut prepare = |n: usize| -> Vec<Prepared> {
        generator
            .take(n)
            .into_iter()
            .map(|d| {
                let body = d.to_bytes();
                // Generated bodies are readable: the simulator tests it.
                let keys = keys_in(&body)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|k| seen.insert(k.clone()))
                    .collect();
                Prepared {
                    signature: aaa_signing::sign(stack.secret.as_bytes(), &body),
                    body,
                    keys,
                }
            })
            .collect()
    };
    // Warm-up, not reported: the consumer group's first join and the
    // connection pools would otherwise be charged to the first rate.
    let warmup = offer(&stack, &client, prepare(500), 250).await?;
    if warmup.missing > 0 || warmup.failed > 0 {
        let receiver = reqwest::get(format!("{}/metrics", stack.receiver_admin))
            .await?
            .text()
            .await?;
        let outcomes: Vec<&str> = receiver
            .lines()
            .filter(|l| l.starts_with("aaa_receiver_requests_total{") && !l.ends_with(" 0"))
            .collect();
        return Err(Error::Setup(format!(
            "the pipeline did not warm up: {warmup:?}; the receiver's answers: {outcomes:?}"
        )));
    }
    for &rate in rates {
        eprintln!("  offered {rate} deliveries/s for {:?}", settings.duration);
        let prepared = prepare((rate * settings.duration.as_secs()) as usize);
        reports.push(offer(&stack, &client, prepared, rate).await?);
    }
    let max_sustained_per_second = reports
        .iter()
        .filter(|r| r.sustained)
        .map(|r| r.offered_per_second)
        .max();
    Ok(E2eReport {
        duration_seconds: settings.duration.as_secs(),
        rates: reports,
        max_sustained_per_second,
        receiver_memory: stack.receiver.os_pid().and_then(procfs::memory),
        consumer_memory: stack.consumer.os_pid().and_then(procfs::memory),
    })
}

/// Watches `events` for new rows and notes when each became visible.
///
/// Ids are taken from a sequence when a row is inserted, not when its
/// transaction commits: with batches written concurrently, a batch with
/// lower ids can commit after one with higher ids. Ids skipped below the
/// highest seen are therefore looked up again in later polls (for 30 s:
/// a conflicting insert also uses up an id that never shows).
fn spawn_poller(
    pool: sqlx::PgPool,
    observed: Arc<Mutex<HashMap<Key, Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    tokio::spawn(async move {
        let mut last_id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM events")
            .fetch_one(&pool)
            .await?;
        let mut skipped: std::collections::BTreeMap<i64, Instant> = Default::default();
        while !stop.load(Ordering::Relaxed) {
            let retry: Vec<i64> = skipped.keys().copied().collect();
            let rows: Vec<(i64, Option<String>, String, String)> = sqlx::query_as(
                "(SELECT id, for_user_id, kind, natural_key FROM events WHERE id > $1 ORDER BY id LIMIT 50000)
                 UNION ALL
                 SELECT id, for_user_id, kind, natural_key FROM events WHERE id = ANY($2) AND id <= $1",
            )
            .bind(last_id)
            .bind(&retry)
            .fetch_all(&pool)
            .await?;
            let now = Instant::now();
            let before = last_id;
            let mut new_ids = std::collections::BTreeSet::new();
            {
                let mut observed = lock(&observed);
                for (id, account, kind, key) in rows {
                    skipped.remove(&id);
                    if id > before {
                        new_ids.insert(id);
                    }
                    last_id = last_id.max(id);
                    observed.entry((account, kind, key)).or_insert(now);
                }
            }
            for id in before + 1..last_id {
                if !new_ids.contains(&id) {
                    skipped.insert(id, now);
                }
            }
            skipped.retain(|_, since| now.duration_since(*since) < Duration::from_secs(30));
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    })
}

async fn offer(
    stack: &Stack,
    client: &reqwest::Client,
    prepared: Vec<Prepared>,
    rate: u64,
) -> Result<RateReport, Error> {
    let observed: Arc<Mutex<HashMap<Key, Instant>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = spawn_poller(stack.db.pool.clone(), observed.clone(), stop.clone());
    // The poller's starting point is read before the first send.
    tokio::time::sleep(POLL * 2).await;

    let receiver_before = ReceiverTotals::scrape(&stack.receiver_admin).await;
    let prepared = Arc::new(prepared);
    let n = prepared.len();
    let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let ok_index: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![false; n]));
    let refusals: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Default::default();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let per_tick = (rate as f64 * TICK.as_secs_f64()).max(1.0);
    let began = Instant::now();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut next, mut shed, mut ticks) = (0usize, 0u64, 0f64);
    let mut tasks = tokio::task::JoinSet::new();
    while next < n {
        interval.tick().await;
        ticks += 1.0;
        // Deliveries due by this tick (fractional rates accumulate).
        let due = ((ticks * per_tick) as usize).min(n);
        while next < due {
            let i = next;
            next += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                shed += 1;
                continue;
            };
            let (client, url) = (client.clone(), stack.webhook_url.clone());
            let (sent_at, ok_index, prepared, refusals) = (
                sent_at.clone(),
                ok_index.clone(),
                prepared.clone(),
                refusals.clone(),
            );
            tasks.spawn(async move {
                let p = &prepared[i];
                lock(&sent_at)[i] = Some(Instant::now());
                let answer = client
                    .post(url)
                    .header(aaa_signing::SIGNATURE_HEADER, p.signature.as_str())
                    .header("content-type", "application/json")
                    .body(p.body.clone())
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => lock(&ok_index)[i] = true,
                    Ok(r) => *lock(&refusals).entry(r.status().to_string()).or_default() += 1,
                    Err(e) => *lock(&refusals).entry(format!("error: {e}")).or_default() += 1,
                }
                drop(permit);
            });
        }
    }
    let send_seconds = began.elapsed().as_secs_f64();
    let sending_ended = Instant::now();
    while tasks.join_next().await.is_some() {}
    let receiver = ReceiverView::between(
        receiver_before,
        ReceiverTotals::scrape(&stack.receiver_admin).await,
    );

    // What must show up (keys of deliveries answered 200), and when sent.
    let mut due: HashMap<Key, Instant> = HashMap::new();
    {
        let (sent_at, ok_index) = (lock(&sent_at), lock(&ok_index));
        for (i, p) in prepared.iter().enumerate() {
            if let (true, Some(at)) = (ok_index[i], sent_at[i]) {
                for key in &p.keys {
                    due.entry(key.clone()).or_insert(at);
                }
            }
        }
    }
    let events = due.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !due.keys().all(|k| lock(&observed).contains_key(k)) {
        tokio::time::sleep(POLL).await;
    }
    stop.store(true, Ordering::Relaxed);
    poller
        .await
        .map_err(|e| Error::Setup(format!("poller: {e}")))??;

    // Missing is decided by the table itself, not by the poller: a row the
    // poller did not see in time is late, not lost.
    let stored: std::collections::HashSet<Key> =
        sqlx::query_as::<_, Key>("SELECT for_user_id, kind, natural_key FROM events")
            .fetch_all(&stack.db.pool)
            .await?
            .into_iter()
            .collect();
    let observed = lock(&observed);
    let unobserved_but_stored = due
        .keys()
        .filter(|k| !observed.contains_key(*k) && stored.contains(*k))
        .count();
    let (mut all, mut first_half, mut second_half) = (
        Recorder::default(),
        Recorder::default(),
        Recorder::default(),
    );
    let half = began + Duration::from_secs_f64(send_seconds / 2.0);
    let mut last_visible = sending_ended;
    let mut missing = 0;
    for (key, sent) in &due {
        let Some(&seen_at) = observed.get(key) else {
            if !stored.contains(key) {
                missing += 1;
            }
            continue;
        };
        let latency = seen_at.saturating_duration_since(*sent);
        all.record(latency);
        if *sent < half {
            first_half.record(latency);
        } else {
            second_half.record(latency);
        }
        last_visible = last_visible.max(seen_at);
    }
    let sent = n as u64 - shed;
    let achieved = sent as f64 / send_seconds;
    let (p50_1, p50_2) = (first_half.summary().p50_ms, second_half.summary().p50_ms);
    let drain_seconds = last_visible
        .saturating_duration_since(sending_ended)
        .as_secs_f64();
    let answered_ok = lock(&ok_index).iter().filter(|ok| **ok).count() as u64;
    // Every delivery sent was answered 2xx or counts as failed.
    let failed = sent - answered_ok;
    Ok(RateReport {
        offered_per_second: rate,
        sent,
        shed,
        achieved_per_second: achieved,
        answered_ok,
        failed,
        refusals: lock(&refusals).clone(),
        events,
        missing,
        unobserved_but_stored,
        latency: all.summary(),
        p50_first_half_ms: p50_1,
        p50_second_half_ms: p50_2,
        drain_seconds,
        sustained: shed == 0
            && failed == 0
            && missing == 0
            && unobserved_but_stored == 0
            && achieved >= 0.95 * rate as f64
            && p50_2 <= 2.0 * p50_1 + 50.0
            && drain_seconds < 2.0,
        receiver,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_view_reads_sheds_broker_refusals_and_slow_acknowledgements() {
        let page = |shed: u32, refused: u32, acks: u32, fast: u32, seconds: f64| {
            format!(
                "aaa_receiver_requests_shed_total {shed}\n\
                 aaa_receiver_requests_total{{webhook=\"w\",route=\"delivery\",outcome=\"broker_unavailable\"}} {refused}\n\
                 aaa_receiver_requests_total{{webhook=\"w\",route=\"delivery\",outcome=\"ok\"}} {acks}\n\
                 aaa_receiver_produce_duration_seconds_bucket{{webhook=\"w\",le=\"0.05\"}} {fast}\n\
                 aaa_receiver_produce_duration_seconds_sum{{webhook=\"w\"}} {seconds}\n\
                 aaa_receiver_produce_duration_seconds_count{{webhook=\"w\"}} {acks}\n"
            )
        };
        let before = ReceiverTotals::from_metrics(&page(1, 0, 10, 10, 0.1));
        let after = ReceiverTotals::from_metrics(&page(5, 2, 110, 85, 4.1));
        let view = ReceiverView::between(before, after);
        assert_eq!(view.shed, 4.0);
        assert_eq!(view.broker_refused, 2.0);
        assert!((view.produce_mean_ms - 40.0).abs() < 1e-9, "{view:?}");
        assert!((view.produce_over_50ms - 0.25).abs() < 1e-9, "{view:?}");
    }
}
