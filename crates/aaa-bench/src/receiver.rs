//! Scenario 1: the receiver under closed-loop load, against a bare axum
//! handler on the same loopback setup. The receiver verifies the HMAC and
//! waits for the broker's acknowledgement of every delivery; the bare handler
//! answers 200 at once: the ratio is what durability and authenticity cost.

use std::path::Path;

use aaa_testkit::{Broker, Service};

use crate::wrk::{self, Load, Request, WrkResult};
use crate::{Error, Settings, procfs};

#[derive(Debug, serde::Serialize)]
pub struct ReceiverReport {
    pub body_bytes: usize,
    pub connections: u32,
    pub baseline: WrkResult,
    /// Baseline 2: bare handler + produce + broker ack (no HMAC).
    pub produce_baseline: WrkResult,
    pub receiver: WrkResult,
    /// receiver req/s ÷ baseline req/s.
    pub ratio: f64,
    /// receiver req/s ÷ produce-baseline req/s: the receiver's own cost.
    pub ratio_to_produce_baseline: f64,
    /// CPU cores used during the measured receiver run.
    pub receiver_cpu_cores: Option<f64>,
    pub broker_cpu_cores: Option<f64>,
    pub produce_baseline_broker_cpu_cores: Option<f64>,
    pub receiver_memory: Option<procfs::Memory>,
    pub crc_baseline: WrkResult,
    pub crc: WrkResult,
}

/// A second baseline: an axum handler that produces the body to the same
/// broker with the receiver's producer settings and answers 200 after the
/// acknowledgement, with no signature check, headers or metrics. The gap to
/// it is the receiver's own cost; the gap from it to the bare handler is
/// the broker's.
async fn producing_server(bootstrap: &str) -> Result<String, Error> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()?;
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let producer = producer.clone();
        async move {
            let record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to("aaa.baseline").payload(&body[..]);
            match producer
                .send(record, std::time::Duration::from_secs(3))
                .await
            {
                Ok(_) => axum::http::StatusCode::OK,
                Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// CPU cores each process used while `f` ran (`None` for one that is gone
/// or was never there), all over the same interval.
fn cpu_cores_during<T, const N: usize>(
    pids: [Option<u32>; N],
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<(T, [Option<f64>; N]), Error> {
    let before = pids.map(|pid| pid.and_then(procfs::cpu_seconds));
    let started = std::time::Instant::now();
    let result = f()?;
    let seconds = started.elapsed().as_secs_f64();
    let mut cores = [None; N];
    for (i, pid) in pids.iter().enumerate() {
        let after = pid.and_then(procfs::cpu_seconds);
        cores[i] = before[i].zip(after).map(|(b, a)| (a - b) / seconds);
    }
    Ok((result, cores))
}

/// A bare axum server: 200 with an empty body on every path and method.
async fn bare_server() -> Result<String, Error> {
    let app = axum::Router::new().fallback(|| async { "" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// A realistic delivery of 1–2 KB from the simulator's generator.
fn delivery_body() -> Vec<u8> {
    let start = chrono::DateTime::UNIX_EPOCH + chrono::TimeDelta::days(20_000);
    let mut generator = aaa_sim::generate::Generator::new(7, 1000, start);
    let deliveries = generator.take(2000);
    deliveries
        .iter()
        .map(|d| d.to_bytes())
        .find(|b| (1000..=2000).contains(&b.len()))
        .unwrap_or_else(|| {
            // Pad the first delivery into range; the padding is ignored.
            let mut body = deliveries[0].body.clone();
            body["padding"] = serde_json::Value::String("x".repeat(1200));
            body.to_string().into_bytes()
        })
}

pub async fn run(settings: &Settings, scratch: &Path) -> Result<ReceiverReport, Error> {
    let body = delivery_body();
    let secret = "bench-consumer-secret";
    let signature = aaa_signing::sign(secret.as_bytes(), &body);
    let body_path = scratch.join("delivery.json");
    std::fs::write(&body_path, &body)?;
    let post = || Request::Post {
        body: &body_path,
        signature: &signature,
    };
    let load = Load {
        connections: settings.connections,
        duration: settings.duration,
    };
    let warmup = Load {
        connections: settings.connections,
        duration: std::time::Duration::from_secs(2),
    };
    let crc_load = Load {
        connections: 4,
        duration: settings.duration / 2,
    };

    let bare = bare_server().await?;
    eprintln!("  baseline: bare axum handler");
    wrk::run(&format!("{bare}/webhooks/x"), post(), &warmup, scratch)?;
    let baseline = wrk::run(&format!("{bare}/webhooks/x"), post(), &load, scratch)?;
    let crc_baseline = wrk::run(
        &format!("{bare}/webhooks/x?crc_token=bench"),
        Request::Get,
        &crc_load,
        scratch,
    )?;

    let broker = Broker::start().await;
    broker.create_topic("aaa.raw", 6).await;
    broker.create_topic("aaa.baseline", 6).await;
    eprintln!("  baseline: bare handler that waits for the broker's acknowledgement");
    let producing = producing_server(&broker.bootstrap()).await?;
    wrk::run(&producing, post(), &warmup, scratch)?;
    let (produce_baseline, [produce_baseline_broker_cpu_cores]) =
        cpu_cores_during([broker.os_pid()], || {
            wrk::run(&producing, post(), &load, scratch)
        })?;

    eprintln!("  receiver: HMAC check and broker acknowledgement per delivery");
    let webhooks = scratch.join("webhooks.toml");
    std::fs::write(
        &webhooks,
        "[[webhooks]]\nid = \"1\"\npath = \"/webhooks/x\"\nconsumer_secret_env = [\"BENCH_CONSUMER_SECRET\"]\n",
    )?;
    let receiver = Service::spawn(
        "receiver",
        &settings.aaa_bin,
        &["receiver"],
        &[
            ("AAA_LISTEN", "127.0.0.1:0".into()),
            ("AAA_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("AAA_WEBHOOKS_FILE", webhooks.display().to_string()),
            ("BENCH_CONSUMER_SECRET", secret.into()),
            ("AAA_KAFKA_BROKERS", broker.bootstrap()),
            ("AAA_RAW_TOPIC", "aaa.raw".into()),
            // As many slots as the largest connection count measured, with
            // the body budget that takes (this machine has the memory).
            ("AAA_MAX_CONCURRENT_REQUESTS", "1024".into()),
            // 1024 slots of 1 MiB, and the 2 oversized slots (1 MiB more each).
            (
                "AAA_BODY_BUFFER_BYTES",
                ((1u64 << 30) + (2 << 20)).to_string(),
            ),
        ],
    );
    let public = receiver.addr("public").await;
    let url = format!("http://{public}/webhooks/x");
    wrk::run(&url, post(), &warmup, scratch)?;
    let (measured, [receiver_cpu_cores, broker_cpu_cores]) =
        cpu_cores_during([receiver.os_pid(), broker.os_pid()], || {
            wrk::run(&url, post(), &load, scratch)
        })?;
    let crc = wrk::run(
        &format!("{url}?crc_token=bench"),
        Request::Get,
        &crc_load,
        scratch,
    )?;
    let receiver_memory = receiver.os_pid().and_then(procfs::memory);
    Ok(ReceiverReport {
        body_bytes: body.len(),
        connections: settings.connections,
        ratio: measured.requests_per_second() / baseline.requests_per_second(),
        ratio_to_produce_baseline: measured.requests_per_second()
            / produce_baseline.requests_per_second(),
        receiver_cpu_cores,
        broker_cpu_cores,
        produce_baseline_broker_cpu_cores,
        baseline,
        produce_baseline,
        receiver: measured,
        receiver_memory,
        crc_baseline,
        crc,
    })
}
