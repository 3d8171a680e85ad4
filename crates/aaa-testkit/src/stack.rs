use std::path::PathBuf;
use std::time::Duration;

use crate::{Broker, Service, TestDb, eventually};

pub const SECOND_WEBHOOK_ID: &str = "2000000000000000002";

/// Knobs a test may turn; defaults suit most.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub partitions: i32,
    pub produce_timeout_ms: u64,
    pub batch_max_records: usize,
    pub max_body_bytes: usize,
    /// Scaled clock shared by every process: (speed, real epoch in RFC 3339).
    pub clock: Option<(f64, String)>,
    /// Simulated seconds between receiver heartbeats.
    pub heartbeat_secs: u64,
    /// The watermark's audit slot in minutes (`AAA_WATERMARK_AUDIT_MINUTES`).
    /// Off by default so gap tests see only the windows their gaps cause.
    pub audit_minutes: u32,
    /// Superuser URL of the cluster to create the test database on; the
    /// shared test cluster when `None`.
    pub database_cluster: Option<String>,
    /// More settings for the receiver (limits and timeouts under test).
    pub receiver_env: Vec<(&'static str, String)>,
    /// More settings for every watermark replica.
    pub watermark_env: Vec<(&'static str, String)>,
}

impl StackOptions {
    /// Every process on one clock running `speed` times faster than real time.
    pub fn scaled(speed: f64) -> StackOptions {
        let epoch = chrono::Utc::now().to_rfc3339();
        StackOptions {
            clock: Some((speed, epoch)),
            heartbeat_secs: 30,
            ..StackOptions::default()
        }
    }

    pub fn clock_env(&self) -> Vec<(&'static str, String)> {
        match &self.clock {
            Some((speed, epoch)) => vec![
                ("AAA_CLOCK_SPEED", speed.to_string()),
                ("AAA_CLOCK_REAL_EPOCH", epoch.clone()),
            ],
            None => vec![],
        }
    }

    /// The same clock, for assertions in the test.
    pub fn clock(&self) -> aaa_common::Clock {
        match &self.clock {
            Some((speed, epoch)) => {
                let real_epoch = epoch.parse().expect("RFC 3339 epoch");
                aaa_common::Clock::Scaled {
                    real_epoch,
                    sim_epoch: real_epoch,
                    speed: *speed,
                }
            }
            None => aaa_common::Clock::Wall,
        }
    }
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            partitions: 3,
            produce_timeout_ms: 2500,
            batch_max_records: 100,
            max_body_bytes: 1024 * 1024,
            clock: None,
            heartbeat_secs: 10,
            audit_minutes: 0,
            database_cluster: None,
            receiver_env: Vec::new(),
            watermark_env: Vec::new(),
        }
    }
}

/// The whole pipeline of one test: its own broker, database, receiver and
/// consumer processes.
pub struct Stack {
    pub bin: PathBuf,
    pub broker: Broker,
    pub db: TestDb,
    /// What the consumer connects with: a member of `aaa_consumer` only.
    pub consumer_url: String,
    /// What the watermark connects with: a member of `aaa_watermark` only.
    pub watermark_url: String,
    pub receiver: Service,
    pub consumer: Service,
    pub webhook_id: String,
    pub webhook_url: String,
    /// The second webhook (id [`SECOND_WEBHOOK_ID`]) and its secret.
    pub second_webhook_url: String,
    pub second_secret: String,
    pub receiver_admin: String,
    pub secret: String,
    pub topic: String,
    pub options: StackOptions,
    consumer_env: Vec<(&'static str, String)>,
    receiver_env: Vec<(&'static str, String)>,
    _config_dir: tempfile::TempDir,
}

impl Stack {
    /// `bin` is the `aaa` binary under test (`env!("CARGO_BIN_EXE_aaa")`).
    pub async fn start(bin: &str, options: StackOptions) -> Stack {
        let broker = Broker::start().await;
        let topic = "aaa.raw".to_owned();
        broker.create_topic(&topic, options.partitions).await;
        let db = match &options.database_cluster {
            Some(cluster) => TestDb::migrated_on(cluster).await,
            None => TestDb::migrated().await,
        };
        let consumer_url = db.consumer_url().await;
        let watermark_url = db.watermark_url().await;
        let config_dir = tempfile::tempdir().expect("config dir");
        let webhook_id = "1146654567674912769".to_owned();
        let webhooks_file = config_dir.path().join("webhooks.toml");
        // A second webhook, its secret in a file, checks that one receiver
        // serves several webhooks, each with its own secret.
        let second_secret = format!("second-{}", uuid::Uuid::new_v4().simple());
        let second_secret_file = config_dir.path().join("second-secret");
        std::fs::write(&second_secret_file, format!("{second_secret}\n"))
            .expect("write secret file");
        std::fs::write(
            &webhooks_file,
            format!(
                "[[webhooks]]\nid = \"{webhook_id}\"\npath = \"/webhooks/x\"\nconsumer_secret_env = [\"TEST_CONSUMER_SECRET\"]\n\
                 [[webhooks]]\nid = \"{SECOND_WEBHOOK_ID}\"\npath = \"/webhooks/second\"\nconsumer_secret_files = [\"{}\"]\n",
                second_secret_file.display()
            ),
        )
        .expect("write webhooks file");
        let secret = format!("secret-{}", uuid::Uuid::new_v4().simple());
        let bin = PathBuf::from(bin);

        let mut receiver_env: Vec<(&'static str, String)> = vec![
            ("AAA_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("AAA_WEBHOOKS_FILE", webhooks_file.display().to_string()),
            ("TEST_CONSUMER_SECRET", secret.clone()),
            ("AAA_KAFKA_BROKERS", broker.bootstrap()),
            ("AAA_RAW_TOPIC", topic.clone()),
            (
                "AAA_PRODUCE_TIMEOUT_MS",
                options.produce_timeout_ms.to_string(),
            ),
            ("AAA_MAX_BODY_BYTES", options.max_body_bytes.to_string()),
            (
                "AAA_HEARTBEAT_INTERVAL_SECS",
                options.heartbeat_secs.to_string(),
            ),
        ];
        receiver_env.extend(options.clock_env());
        receiver_env.extend(options.receiver_env.iter().cloned());
        let mut first_env = receiver_env.clone();
        first_env.push(("AAA_LISTEN", "127.0.0.1:0".into()));
        let receiver = Service::spawn("receiver", &bin, &["receiver"], &first_env);
        let public = receiver.addr("public").await;
        receiver_env.push(("AAA_LISTEN", public.to_string()));
        let admin = receiver.addr("admin").await;
        let consumer_env = vec![
            ("AAA_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("AAA_DATABASE_URL", consumer_url.clone()),
            ("AAA_KAFKA_BROKERS", broker.bootstrap()),
            ("AAA_RAW_TOPIC", topic.clone()),
            ("AAA_CONSUMER_GROUP", "aaa-consumer-test".into()),
            (
                "AAA_BATCH_MAX_RECORDS",
                options.batch_max_records.to_string(),
            ),
            ("AAA_BATCH_MAX_WAIT_MS", "50".into()),
            // /healthz fails after 2 s of a batch that cannot be stored.
            ("AAA_STALL_SECS", "2".into()),
        ];
        let mut consumer_env = consumer_env;
        consumer_env.extend(options.clock_env());
        let consumer = Service::spawn("consumer", &bin, &["consumer"], &consumer_env);
        let stack = Stack {
            consumer,
            consumer_env,
            receiver_env,
            bin,
            broker,
            db,
            consumer_url,
            watermark_url,
            receiver,
            webhook_id,
            webhook_url: format!("http://{public}/webhooks/x"),
            second_webhook_url: format!("http://{public}/webhooks/second"),
            second_secret,
            receiver_admin: format!("http://{admin}"),
            secret,
            topic,
            options,
            _config_dir: config_dir,
        };
        stack
            .consumer
            .wait_for_log("partition assignment", Duration::from_secs(60), |e| {
                e["message"] == "partitions assigned"
            })
            .await;
        stack
    }

    /// Another consumer process in the stack's group (a restart after a kill).
    pub fn spawn_consumer(&self) -> Service {
        Service::spawn("consumer", &self.bin, &["consumer"], &self.consumer_env)
    }

    /// A consumer in the stack's group whose database sessions are named
    /// `name` (`pg_stat_activity.application_name`), with `extra` added to
    /// its environment.
    pub fn spawn_consumer_as(&self, name: &str, extra: &[(&'static str, String)]) -> Service {
        let mut env: Vec<(&'static str, String)> = self
            .consumer_env
            .iter()
            .map(|(k, v)| match *k {
                "AAA_DATABASE_URL" => {
                    let glue = if v.contains('?') { '&' } else { '?' };
                    (*k, format!("{v}{glue}application_name={name}"))
                }
                _ => (*k, v.clone()),
            })
            .collect();
        env.extend(extra.iter().cloned());
        Service::spawn(name, &self.bin, &["consumer"], &env)
    }

    /// Kills the stack's consumer and puts [`Stack::spawn_consumer_as`]'s
    /// in its place, once that one owns partitions.
    pub async fn replace_consumer(&mut self, name: &str, extra: &[(&'static str, String)]) {
        self.consumer.kill();
        self.consumer = self.spawn_consumer_as(name, extra);
        self.consumer
            .wait_for_log("partition assignment", Duration::from_secs(60), |e| {
                e["message"] == "partitions assigned"
            })
            .await;
    }

    /// Where the stack's own receiver listens (its webhook URL's address
    /// until a balancer takes that place).
    pub fn receiver_addr(&self) -> std::net::SocketAddr {
        self.receiver_env
            .iter()
            .find(|(k, _)| *k == "AAA_LISTEN")
            .and_then(|(_, v)| v.parse().ok())
            .expect("the receiver's address")
    }

    /// A new receiver process on the same port (after [`Service::kill`]).
    pub async fn restart_receiver(&mut self) {
        self.receiver = Service::spawn("receiver", &self.bin, &["receiver"], &self.receiver_env);
        self.receiver.addr("public").await;
    }

    /// The receiver's environment, listening on `listen`.
    fn receiver_env_on(&self, listen: String) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = self
            .receiver_env
            .iter()
            .filter(|(k, _)| *k != "AAA_LISTEN")
            .cloned()
            .collect();
        env.push(("AAA_LISTEN", listen));
        env
    }

    /// Another receiver replica serving the same webhooks on a port of its
    /// own (put them behind a [`crate::Balancer`]); `at` reuses the port of
    /// a replica that was killed.
    pub async fn spawn_receiver_replica(
        &self,
        name: &str,
        at: Option<std::net::SocketAddr>,
    ) -> (Service, std::net::SocketAddr) {
        self.spawn_receiver_replica_with(name, at, &[]).await
    }

    /// A receiver replica with more settings (`extra` wins), e.g. its own
    /// way to the broker through a [`crate::KafkaProxy`].
    pub async fn spawn_receiver_replica_with(
        &self,
        name: &str,
        at: Option<std::net::SocketAddr>,
        extra: &[(&'static str, String)],
    ) -> (Service, std::net::SocketAddr) {
        let mut env =
            self.receiver_env_on(at.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string()));
        env.push(("AAA_REPLICA_ID", name.to_owned()));
        env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        env.extend(extra.iter().cloned());
        let service = Service::spawn(name, &self.bin, &["receiver"], &env);
        let addr = service.addr("public").await;
        (service, addr)
    }

    /// Another receiver replica that also reads `sim`'s activity stream
    /// (AAA_STREAM_URL), on its own port.
    pub fn spawn_stream_receiver(&self, sim: &crate::SimProcess) -> Service {
        self.spawn_stream_receiver_with(sim, &[])
    }

    /// A stream reader with more settings (`extra` wins).
    pub fn spawn_stream_receiver_with(
        &self,
        sim: &crate::SimProcess,
        extra: &[(&'static str, String)],
    ) -> Service {
        let mut env = self.receiver_env_on("127.0.0.1:0".into());
        env.push(("AAA_STREAM_URL", format!("{}/2/activity/stream", sim.url)));
        env.push(("AAA_X_BEARER_TOKEN", sim.bearer.clone()));
        env.push(("AAA_STREAM_STALL_SECS", "10".into()));
        env.extend(extra.iter().cloned());
        Service::spawn("stream-receiver", &self.bin, &["receiver"], &env)
    }

    /// A watermark replica watching this stack's webhook at `sim`.
    pub fn spawn_watermark(&self, sim: &crate::SimProcess, replica: &str) -> Service {
        self.spawn_watermark_with(sim, replica, &[])
    }

    /// A watermark replica with more settings (`extra` wins).
    pub fn spawn_watermark_with(
        &self,
        sim: &crate::SimProcess,
        replica: &str,
        extra: &[(&'static str, String)],
    ) -> Service {
        let mut env = vec![
            ("AAA_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
            ("AAA_DATABASE_URL", self.watermark_url.clone()),
            ("AAA_KAFKA_BROKERS", self.broker.bootstrap()),
            ("AAA_RAW_TOPIC", self.topic.clone()),
            ("AAA_WATERMARK_WEBHOOKS", self.webhook_id.clone()),
            ("AAA_WATERMARK_TICK_MS", "1000".to_owned()),
            ("AAA_X_API_BASE_URL", sim.url.clone()),
            ("AAA_X_BEARER_TOKEN", sim.bearer.clone()),
            ("AAA_REPLICA_ID", replica.to_owned()),
            // A killed replica's webhook is taken over within 3 real seconds.
            ("AAA_WATERMARK_LEASE_SECS", "3".to_owned()),
            // Validity unread for 20 real seconds is suspect (a slow round on
            // a loaded machine must not look like an outage at X).
            (
                "AAA_WATERMARK_VALIDITY_UNKNOWN_SECS",
                ((20.0 * self.options.clock.as_ref().map_or(1.0, |(speed, _)| *speed)) as i64)
                    .to_string(),
            ),
            (
                "AAA_WATERMARK_AUDIT_MINUTES",
                self.options.audit_minutes.to_string(),
            ),
            // Receivers on loopback answer a delivery within their 2.5 s
            // produce timeout and half a second for the report, and the
            // simulator sends a job's completion after its deliveries were
            // answered; the default (10 s) would hold every replay job's
            // reconciliation 10 real seconds, and hourly audits (every 12
            // real seconds in chaos runs) would pile up behind them.
            ("AAA_WATERMARK_RECEIVER_MARGIN_MS", "3000".to_owned()),
        ];
        env.extend(self.options.clock_env());
        env.extend(self.options.watermark_env.iter().cloned());
        env.extend(extra.iter().cloned());
        Service::spawn(replica, &self.bin, &["watermark"], &env)
    }

    /// The X simulator, registered on this stack's webhook (under the id the
    /// receiver serves it as) with all of its accounts subscribed, signing
    /// with the webhook's secret, on the stack's clock.
    pub async fn start_sim(&self, args: &[&str]) -> crate::SimProcess {
        let mut all = vec![
            "--register-webhook",
            self.webhook_url.as_str(),
            "--register-webhook-id",
            self.webhook_id.as_str(),
        ];
        let clock_args: Vec<String> = self
            .options
            .clock
            .iter()
            .flat_map(|(speed, epoch)| {
                [
                    "--clock-speed".to_owned(),
                    speed.to_string(),
                    "--clock-real-epoch".to_owned(),
                    epoch.clone(),
                ]
            })
            .collect();
        all.extend(clock_args.iter().map(String::as_str));
        all.extend_from_slice(args);
        let sim = crate::SimProcess::start(&self.bin, &self.secret, &all).await;
        sim.service
            .wait_for_log("the webhook registration", Duration::from_secs(30), |e| {
                e["message"] == "webhook registered and accounts subscribed"
            })
            .await;
        sim
    }

    /// Starts live traffic at `sim` and waits until it is stored and the
    /// receiver's heartbeats prove coverage: the state every gap scenario
    /// starts from.
    pub async fn start_traffic(
        &self,
        sim: &crate::SimProcess,
        timeout: Duration,
    ) -> crate::Traffic {
        let traffic = crate::Traffic::start(sim);
        eventually(timeout, "live traffic and heartbeats stored", || async {
            let beats = self
                .db
                .count("SELECT count(*) FROM coverage_heartbeats")
                .await;
            (self.db.count("SELECT count(*) FROM events").await > 20 && beats > 3).then_some(())
        })
        .await;
        traffic
    }

    /// Waits until a replay job is in flight (a window `submitted`).
    pub async fn replay_in_flight(&self, timeout: Duration) {
        eventually(timeout, "a replay job in flight", || async {
            (self
                .db
                .count("SELECT count(*) FROM replay_windows WHERE state = 'submitted'")
                .await
                > 0)
            .then_some(())
        })
        .await;
    }

    /// Deliveries the receiver answered with `outcome` (`ok`,
    /// `bad_signature`, `broker_unavailable`, ...).
    pub async fn delivery_outcomes(&self, outcome: &str) -> f64 {
        let label = format!("outcome=\"{outcome}\"");
        crate::metric_where(&self.receiver_admin, |l| {
            l.starts_with("aaa_receiver_requests_total")
                && l.contains("route=\"delivery\"")
                && l.contains(&label)
        })
        .await
    }

    /// A sender that signs with this stack's webhook secret, as X does.
    pub fn sender(&self) -> aaa_sim::send::Sender {
        aaa_sim::send::Sender::new(self.webhook_url.clone(), self.secret.clone().into())
            .expect("HTTP client")
    }
}
