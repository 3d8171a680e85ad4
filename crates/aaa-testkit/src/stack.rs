use std::path::PathBuf;
use std::time::Duration;

use crate::{Broker, Service, TestDb};

pub const SECOND_WEBHOOK_ID: &str = "2000000000000000002";

/// Knobs a test may turn; defaults suit most.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub partitions: i32,
    pub produce_timeout_ms: u64,
    pub batch_max_records: usize,
    pub max_body_bytes: usize,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            partitions: 3,
            produce_timeout_ms: 2500,
            batch_max_records: 100,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// The whole pipeline of one test: its own broker, database, receiver and
/// consumer processes.
pub struct Stack {
    pub bin: PathBuf,
    pub broker: Broker,
    pub db: TestDb,
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
    _config_dir: tempfile::TempDir,
}

impl Stack {
    /// `bin` is the `aaa` binary under test (`env!("CARGO_BIN_EXE_aaa")`).
    pub async fn start(bin: &str, options: StackOptions) -> Stack {
        let broker = Broker::start().await;
        let topic = "aaa.raw".to_owned();
        broker.create_topic(&topic, options.partitions).await;
        let db = TestDb::migrated().await;
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

        let receiver = Service::spawn(
            "receiver",
            &bin,
            &["receiver"],
            &[
                ("AAA_LISTEN", "127.0.0.1:0".into()),
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
            ],
        );
        let public = receiver.addr("public").await;
        let admin = receiver.addr("admin").await;
        let consumer_env = vec![
            ("AAA_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("AAA_DATABASE_URL", db.url.clone()),
            ("AAA_KAFKA_BROKERS", broker.bootstrap()),
            ("AAA_RAW_TOPIC", topic.clone()),
            ("AAA_CONSUMER_GROUP", "aaa-consumer-test".into()),
            (
                "AAA_BATCH_MAX_RECORDS",
                options.batch_max_records.to_string(),
            ),
            ("AAA_BATCH_MAX_WAIT_MS", "50".into()),
        ];
        let consumer = Service::spawn("consumer", &bin, &["consumer"], &consumer_env);
        let stack = Stack {
            consumer,
            consumer_env,
            bin,
            broker,
            db,
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

    /// The X simulator, registered on this stack's webhook with all of its
    /// accounts subscribed, signing with the webhook's secret.
    pub async fn start_sim(&self, args: &[&str]) -> crate::SimProcess {
        let mut all = vec!["--register-webhook", self.webhook_url.as_str()];
        all.extend_from_slice(args);
        let sim = crate::SimProcess::start(&self.bin, &self.secret, &all).await;
        sim.service
            .wait_for_log("the webhook registration", Duration::from_secs(30), |e| {
                e["message"] == "webhook registered and accounts subscribed"
            })
            .await;
        sim
    }

    /// A sender that signs with this stack's webhook secret, as X does.
    pub fn sender(&self) -> aaa_sim::send::Sender {
        aaa_sim::send::Sender::new(self.webhook_url.clone(), self.secret.clone().into())
            .expect("HTTP client")
    }
}
