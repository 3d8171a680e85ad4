//! Scenario 2 (and 4, the scale curve): N deliveries pre-loaded into Kafka,
//! then the consumer turns them into committed, normalized rows. Baseline:
//! `COPY` of the same raw payloads into a plain table, the fastest way
//! Postgres takes rows at all.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aaa_common::kafka::headers;
use aaa_testkit::{Broker, Service, TestDb};
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::pgprofile::{self, PgProfile};
use crate::{Error, Settings, procfs};

const TOPIC: &str = "aaa.raw";
const PARTITIONS: i32 = 6;

#[derive(Debug, serde::Serialize)]
pub struct ConsumerReport {
    pub accounts: usize,
    pub deliveries: usize,
    /// Consumer processes in the group.
    pub replicas: usize,
    /// Concurrent batch writers in each (`AAA_CONSUMER_WRITERS`).
    pub writers: usize,
    /// Distinct activities in them: the `events` rows expected.
    pub events: usize,
    /// Rows in every table once done (events plus normalized tables).
    pub rows: i64,
    pub batch_max_records: usize,
    /// Mean records per written batch (from the consumer's own histogram).
    pub mean_batch_records: Option<f64>,
    /// Mean milliseconds one batch's transaction took, first statement to
    /// commit (the consumer's own histogram).
    pub mean_write_ms: Option<f64>,
    /// Of the run's wall time, how much the writers spent in transactions
    /// (sum over writers and replicas; N writers fully busy: N).
    pub writer_busy: Option<f64>,
    /// From the first row visible to the last (excludes group join).
    pub seconds: f64,
    pub events_per_second: f64,
    pub rows_per_second: f64,
    pub copy_seconds: f64,
    pub copy_rows_per_second: f64,
    /// Reading the same records from the broker and nothing else (a group
    /// of one with the consumer's fetch settings): the most the consumer
    /// could do with a free database.
    pub read_only_per_second: f64,
    /// Deliveries per second, consumer ÷ read-only.
    pub ratio_to_read_only: f64,
    /// Write-ahead log Postgres wrote per delivery: the consumer's rows and
    /// their indexes, and the `COPY` baseline's.
    pub wal_bytes_per_delivery: f64,
    pub copy_wal_bytes_per_row: f64,
    /// Deliveries per second, consumer ÷ COPY.
    pub ratio_to_copy: f64,
    /// `COPY` of exactly the rows the consumer stored (events and every
    /// normalized table) into a fresh database with the same schema,
    /// indexes and constraints, one transaction: the cost of the rows
    /// themselves.
    pub rows_copy_seconds: f64,
    /// Per table: (table, MB of binary `COPY` data), in the order copied.
    pub rows_copy_tables: Vec<(String, f64)>,
    /// Consumer ÷ that: how close the consumer is to the rows' own cost.
    pub ratio_to_rows_copy: f64,
    /// Postgres CPU seconds per second of the consumer's run.
    pub db_cpu_cores: f64,
    /// The consumers' CPU seconds per second of the run, all replicas
    /// together.
    pub consumer_cpu_cores: Option<f64>,
    /// The broker's, serving the consumers' fetches and commits.
    pub broker_cpu_cores: Option<f64>,
    /// The same, per replica.
    pub consumer_cpu_cores_per_replica: Option<f64>,
    pub consumer_memory: Option<procfs::Memory>,
    pub preload_seconds: f64,
    /// Where Postgres spent the consumer's run.
    pub pg_profile: PgProfile,
}

fn deliveries(accounts: usize, n: usize, seed: u64) -> Vec<aaa_sim::generate::Delivery> {
    let start = chrono::DateTime::UNIX_EPOCH + chrono::TimeDelta::days(20_000);
    aaa_sim::generate::Generator::new(seed, accounts, start).take(n)
}

/// Distinct (account, kind, natural key) triples: one `events` row each.
fn expected_events(bodies: &[Vec<u8>]) -> usize {
    let keys: HashSet<_> = bodies
        .iter()
        .flat_map(|b| aaa_testkit::keys_in(b).unwrap_or_default())
        .collect();
    keys.len()
}

async fn preload(broker: &Broker, bodies: &[Vec<u8>], keys: &[String]) -> Result<(), Error> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "20")
        .create()?;
    let now_ms = chrono::Utc::now().timestamp_millis().to_string();
    let sends = bodies.iter().zip(keys).enumerate().map(|(i, (body, key))| {
        let producer = &producer;
        let now_ms = &now_ms;
        async move {
            let request_id = format!("bench-{i}");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: headers::WEBHOOK_ID,
                    value: Some("1"),
                })
                .insert(Header {
                    key: headers::RECEIVED_AT_MS,
                    value: Some(now_ms.as_str()),
                })
                .insert(Header {
                    key: headers::REQUEST_ID,
                    value: Some(request_id.as_str()),
                });
            let record = FutureRecord::to(TOPIC)
                .key(key)
                .payload(body)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(60))
                .await
                .map(|_| ())
                .map_err(|(e, _)| Error::Kafka(e))
        }
    });
    let mut results = futures::stream::iter(sends).buffer_unordered(20_000);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

/// Seconds to read `n` records of `TOPIC` with the consumer's fetch
/// settings and a group of its own, doing nothing with them.
async fn read_only_baseline(broker: &Broker, n: usize) -> Result<f64, Error> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let mut config = ClientConfig::new();
    for (key, value) in aaa_common::kafka::CONSUMER_FETCH {
        config.set(key, value);
    }
    let consumer: StreamConsumer = config
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "bench-read-only")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .create()?;
    consumer.subscribe(&[TOPIC])?;
    // From the first record, as the consumer is timed (group join excluded).
    let mut started = None;
    let mut bytes = 0usize;
    for _ in 0..n {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .map_err(|_| Error::Setup("read-only baseline: no record for 60 s".into()))??;
        started.get_or_insert_with(Instant::now);
        bytes += rdkafka::Message::payload(&message).map_or(0, <[u8]>::len);
    }
    std::hint::black_box(bytes);
    Ok(started.map_or(1e-3, |s| s.elapsed().as_secs_f64().max(1e-3)))
}

/// Rows in every table of the schema (names from the catalog, not input).
pub async fn all_rows(db: &TestDb) -> Result<i64, Error> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE '\\_sqlx%' AND tablename <> 'bench_copy'",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut rows = 0;
    for table in tables {
        let sql = format!("SELECT count(*) FROM \"{table}\"");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&db.pool)
            .await?;
        rows += n;
    }
    Ok(rows)
}

/// `COPY` of the raw payloads (text format: backslashes doubled; the JSON
/// has no raw tabs or newlines) into a table with no index.
async fn copy_baseline(db: &TestDb, bodies: &[Vec<u8>]) -> Result<f64, Error> {
    sqlx::query("CREATE TABLE bench_copy (payload jsonb NOT NULL)")
        .execute(&db.pool)
        .await?;
    let mut data = Vec::with_capacity(bodies.iter().map(|b| b.len() + 1).sum());
    for body in bodies {
        for &byte in body {
            if byte == b'\\' {
                data.push(b'\\');
            }
            data.push(byte);
        }
        data.push(b'\n');
    }
    let started = Instant::now();
    let mut conn = db.pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw("COPY bench_copy (payload) FROM STDIN")
        .await?;
    copy.send(data).await?;
    let copied = copy.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    if copied as usize != bodies.len() {
        return Err(Error::Setup(format!(
            "COPY took {copied} of {} rows",
            bodies.len()
        )));
    }
    Ok(seconds)
}

/// Seconds to `COPY` (binary) every row of `from`'s tables into a fresh
/// database migrated to the same schema, tables in foreign-key order, in
/// one transaction. Only the copy in is timed (the rows are read first).
async fn rows_copy_baseline(from: &TestDb) -> Result<(f64, Vec<(String, f64)>), Error> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'
           AND tablename NOT LIKE '\\_sqlx%' AND tablename <> 'bench_copy' ORDER BY 1",
    )
    .fetch_all(&from.pool)
    .await?;
    let references: Vec<(String, String)> = sqlx::query_as(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint
         WHERE contype = 'f' AND connamespace = 'public'::regnamespace AND conrelid <> confrelid",
    )
    .fetch_all(&from.pool)
    .await?;
    let order = foreign_key_order(&tables, &references)?;
    let mut data = Vec::new();
    let mut conn = from.pool.acquire().await?;
    for table in &order {
        // Empty tables are skipped: each COPY round trip costs about 40 ms
        // here whatever it carries, which would swamp the measurement.
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{table}\""
        )))
        .fetch_one(&mut *conn)
        .await?;
        if rows == 0 {
            continue;
        }
        let mut stream = conn
            .copy_out_raw(&format!("COPY \"{table}\" TO STDOUT (FORMAT binary)"))
            .await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        data.push((table, bytes));
    }
    drop(conn);
    let to = TestDb::migrated().await;
    // Through psql (libpq sets TCP_NODELAY): sqlx's COPY waited about
    // 40 ms per table here on Nagle's algorithm, whatever it carried.
    let dir = tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?;
    let mut script = String::from("\\set ON_ERROR_STOP on\nBEGIN;\n");
    for (table, bytes) in &data {
        let file = dir.path().join(format!("{table}.bin"));
        std::fs::write(&file, bytes).map_err(|e| Error::Setup(e.to_string()))?;
        script.push_str(&format!(
            "\\copy \"{table}\" FROM '{}' WITH (FORMAT binary)\n",
            file.display()
        ));
    }
    script.push_str("COMMIT;\n");
    let script_file = dir.path().join("copy.sql");
    std::fs::write(&script_file, script).map_err(|e| Error::Setup(e.to_string()))?;
    let psql = std::env::var("AAA_PG_BIN")
        .map(|bin| std::path::Path::new(&bin).join("psql"))
        .unwrap_or_else(|_| "psql".into());
    let started = Instant::now();
    let output = tokio::process::Command::new(&psql)
        .arg(&to.url)
        .args(["-q", "-X", "-f"])
        .arg(&script_file)
        .output()
        .await
        .map_err(|e| Error::Setup(format!("{}: {e}", psql.display())))?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(Error::Setup(format!(
            "COPY of the stored rows failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let per_table = data
        .iter()
        .map(|(table, bytes)| ((*table).clone(), bytes.len() as f64 / 1e6))
        .collect();
    Ok((seconds, per_table))
}

/// `tables` with every table after those it references.
fn foreign_key_order(
    tables: &[String],
    references: &[(String, String)],
) -> Result<Vec<String>, Error> {
    let mut order: Vec<String> = Vec::new();
    while order.len() < tables.len() {
        let ready = tables.iter().find(|t| {
            !order.contains(t)
                && references
                    .iter()
                    .filter(|(from, _)| from == *t)
                    .all(|(_, to)| order.contains(to) || !tables.contains(to))
        });
        match ready {
            Some(table) => order.push(table.clone()),
            None => return Err(Error::Setup("foreign keys form a cycle".into())),
        }
    }
    Ok(order)
}

/// Where Postgres's write-ahead log is now.
async fn wal_lsn(db: &TestDb) -> Result<String, Error> {
    Ok(sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await?)
}

/// Bytes of write-ahead log written since `lsn`.
async fn wal_since(db: &TestDb, lsn: &str) -> Result<f64, Error> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
            .bind(lsn)
            .fetch_one(&db.pool)
            .await?,
    )
}

/// One consumer's /metrics page; empty if it cannot be read (a replica
/// that went away counts nothing rather than stopping the benchmark).
async fn scrape(admin: std::net::SocketAddr) -> String {
    metrics_page(&format!("http://{admin}")).await
}

/// The /metrics page of a service at `base` (`http://host:port`); empty if
/// it cannot be read.
pub(crate) async fn metrics_page(base: &str) -> String {
    match reqwest::get(format!("{base}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// New events the consumers committed (`aaa_consumer_events_total`,
/// outcome `inserted`), summed over replicas.
async fn inserted_events(admins: &[std::net::SocketAddr]) -> f64 {
    let mut total = 0.0;
    for admin in admins {
        total += aaa_testkit::sum_samples(&scrape(*admin).await, |l| {
            l.starts_with("aaa_consumer_events_total{") && l.contains("outcome=\"inserted\"")
        });
    }
    total
}

/// Sum of the series `name` in a /metrics page.
pub(crate) fn series_sum(text: &str, name: &str) -> f64 {
    aaa_testkit::sum_samples(text, |l| l.starts_with(name))
}

/// Mean of a histogram in a /metrics page: `<name>_sum` ÷ `<name>_count`.
fn histogram_mean(text: &str, name: &str) -> Option<f64> {
    let count = series_sum(text, &format!("{name}_count"));
    (count > 0.0).then(|| series_sum(text, &format!("{name}_sum")) / count)
}

pub async fn run(
    settings: &Settings,
    accounts: usize,
    n: usize,
    seed: u64,
    replicas: usize,
    writers: usize,
) -> Result<ConsumerReport, Error> {
    let replicas = replicas.max(1);
    let deliveries = deliveries(accounts, n, seed);
    let bodies: Vec<Vec<u8>> = deliveries.iter().map(|d| d.to_bytes()).collect();
    let keys: Vec<String> = deliveries
        .iter()
        .map(|d| d.for_user_id.clone().unwrap_or_else(|| "1".into()))
        .collect();
    let events = expected_events(&bodies);

    let broker = Broker::start().await;
    broker.create_topic(TOPIC, PARTITIONS).await;
    let db = TestDb::migrated().await;
    let writer_url = db.consumer_url().await;
    let preload_started = Instant::now();
    preload(&broker, &bodies, &keys).await?;
    let preload_seconds = preload_started.elapsed().as_secs_f64();
    let read_only_seconds = read_only_baseline(&broker, n).await?;

    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&db.pool)
        .await?;
    let postmaster = procfs::parent(backend as u32);
    let db_cpu = || {
        postmaster
            .map(procfs::cpu_seconds_with_children)
            .unwrap_or(0.0)
    };

    let cpu_before = db_cpu();
    let wal_before = pgprofile::start(&db).await?;
    let consumers: Vec<Service> = (0..replicas)
        .map(|_| {
            Service::spawn(
                "consumer",
                &settings.aaa_bin,
                &["consumer"],
                &[
                    ("AAA_ADMIN_LISTEN", "127.0.0.1:0".into()),
                    ("AAA_DATABASE_URL", writer_url.clone()),
                    ("AAA_KAFKA_BROKERS", broker.bootstrap()),
                    ("AAA_RAW_TOPIC", TOPIC.into()),
                    ("AAA_BATCH_MAX_RECORDS", settings.consumer_batch.to_string()),
                    ("AAA_CONSUMER_WRITERS", writers.to_string()),
                ],
            )
        })
        .collect();
    let mut admins = Vec::new();
    for consumer in &consumers {
        admins.push(consumer.addr("admin").await);
    }
    // CPU seconds of Postgres, the consumers and the broker: taken again
    // at the first row, so that the rates cover the same seconds as the
    // throughput (not the group join).
    let consumer_cpu = || {
        consumers
            .iter()
            .map(|c| c.os_pid().and_then(procfs::cpu_seconds))
            .sum::<Option<f64>>()
    };
    let broker_cpu = || broker.os_pid().and_then(procfs::cpu_seconds);
    let mut cpu_at_first_row = (cpu_before, consumer_cpu(), broker_cpu());
    let mut first_row: Option<Instant> = None;
    let mut last_progress = (0i64, Instant::now());
    // Progress from the consumers' own count of committed new events: a
    // `count(*)` every 25 ms took a quarter of Postgres's time in this
    // scenario and slowed what it measured. Checked once by `count(*)` below.
    let done = loop {
        let stored = inserted_events(&admins).await as i64;
        if stored > 0 && first_row.is_none() {
            first_row = Some(Instant::now());
            cpu_at_first_row = (db_cpu(), consumer_cpu(), broker_cpu());
        }
        if stored as usize >= events {
            break Instant::now();
        }
        if stored > last_progress.0 {
            last_progress = (stored, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(60) {
            return Err(Error::Setup(format!(
                "consumers stalled at {stored} of {events} events; the first one's output:\n{}",
                consumers[0].output().join("\n")
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let wal_bytes = wal_since(&db, &wal_before).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await?;
    if stored as usize != events {
        return Err(Error::Setup(format!(
            "the consumers reported {events} events stored, the table holds {stored}"
        )));
    }
    let pg_profile = pgprofile::finish(&db, &wal_before, 12).await;
    let started = first_row.unwrap_or(done);
    let seconds = done.duration_since(started).as_secs_f64().max(1e-3);
    let db_cpu_cores = (db_cpu() - cpu_at_first_row.0) / seconds;
    let consumer_memory = consumers[0].os_pid().and_then(procfs::memory);
    let consumer_cpu_cores = consumer_cpu()
        .zip(cpu_at_first_row.1)
        .map(|(now, then)| (now - then) / seconds);
    let broker_cpu_cores = broker_cpu()
        .zip(cpu_at_first_row.2)
        .map(|(now, then)| (now - then) / seconds);
    // One page per replica for every figure read from it.
    let (mut batch_means, mut write_means, mut write_seconds) = (Vec::new(), Vec::new(), 0.0);
    for admin in &admins {
        let text = scrape(*admin).await;
        batch_means.extend(histogram_mean(&text, "aaa_consumer_batch_records"));
        write_means.extend(histogram_mean(&text, "aaa_consumer_write_duration_seconds"));
        write_seconds += series_sum(&text, "aaa_consumer_write_duration_seconds_sum");
    }
    let mean_write_ms = (!write_means.is_empty())
        .then(|| 1e3 * write_means.iter().sum::<f64>() / write_means.len() as f64);
    let mean_batch_records = (!batch_means.is_empty())
        .then(|| batch_means.iter().sum::<f64>() / batch_means.len() as f64);
    drop(consumers);
    let rows = all_rows(&db).await?;
    let copy_wal_before = wal_lsn(&db).await?;
    let copy_seconds = copy_baseline(&db, &bodies).await?;
    let copy_wal_bytes = wal_since(&db, &copy_wal_before).await?;
    let (rows_copy_seconds, rows_copy_tables) = rows_copy_baseline(&db).await?;
    let deliveries_per_second = n as f64 / seconds;
    let copy_rows_per_second = n as f64 / copy_seconds;
    Ok(ConsumerReport {
        accounts,
        deliveries: n,
        replicas,
        writers,
        events,
        rows,
        batch_max_records: settings.consumer_batch,
        mean_batch_records,
        mean_write_ms,
        writer_busy: (write_seconds > 0.0).then_some(write_seconds / seconds),
        seconds,
        events_per_second: events as f64 / seconds,
        rows_per_second: rows as f64 / seconds,
        copy_seconds,
        copy_rows_per_second,
        wal_bytes_per_delivery: wal_bytes / n as f64,
        copy_wal_bytes_per_row: copy_wal_bytes / n as f64,
        ratio_to_copy: deliveries_per_second / copy_rows_per_second,
        rows_copy_seconds,
        rows_copy_tables,
        ratio_to_rows_copy: rows_copy_seconds / seconds,
        read_only_per_second: n as f64 / read_only_seconds,
        ratio_to_read_only: deliveries_per_second * read_only_seconds / n as f64,
        db_cpu_cores,
        consumer_cpu_cores,
        broker_cpu_cores,
        consumer_cpu_cores_per_replica: consumer_cpu_cores.map(|c| c / replicas as f64),
        consumer_memory,
        preload_seconds,
        pg_profile,
    })
}
