use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::{eventually, free_port};

/// A real Kafka-protocol broker (nisshi, durable SQLite storage) of this test's
/// own, so pausing or killing it disturbs no other test.
pub struct Broker {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

fn nisshi_bin() -> PathBuf {
    std::env::var_os("AAA_NISSHI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("AAA_NISSHI_BIN is not set: run the tests through scripts/test.sh")
        })
}

impl Broker {
    pub async fn start() -> Broker {
        let dir = tempfile::tempdir().expect("broker data dir");
        let mut broker = Broker {
            child: None,
            dir,
            port: free_port(),
        };
        broker.spawn().await;
        broker
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.path().join("broker.log")).expect("broker log");
        let child = Command::new(nisshi_bin())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                "sqlite://nisshi.db",
                "--group-initial-rebalance-delay",
                "0s",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nisshi");
        self.child = Some(child);
        let addr = self.bootstrap();
        eventually(
            Duration::from_secs(20),
            "broker to accept connections",
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
            },
        )
        .await;
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("admin client");
        // As deploy/kafka/kafka-topic.yaml: the receiver's largest record,
        // a 2 MiB body (AAA_MAX_VERIFIED_BYTES) with its headers.
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1))
            .set("max.message.bytes", "2162688");
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topic request");
        for result in results {
            result.unwrap_or_else(|(topic, code)| panic!("create topic {topic}: {code:?}"));
        }
    }

    /// The operating system's id of the broker process (for /proc readings).
    pub fn os_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("broker running").id() as i32)
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP broker");
    }

    pub fn resume(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT broker");
    }

    /// Hard kill, then start again on the same port and storage.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts a killed broker again on the same port and storage.
    pub async fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn().await;
        }
    }

    /// Hard kill (SIGKILL); [`Broker::start_again`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

/// A Kafka-protocol proxy (nisshi's) in front of a test's broker, for one
/// client: it advertises itself, so that client talks to the broker only
/// through it. Freezing it (SIGSTOP) cuts that one client off while every
/// other keeps working: the broker "refuses" only that client's writes.
pub struct KafkaProxy {
    child: Child,
    port: u16,
}

impl KafkaProxy {
    pub async fn start(broker: &Broker) -> KafkaProxy {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let origin = format!("tcp://{}", broker.bootstrap());
        let child = Command::new(nisshi_bin())
            .args([
                "proxy",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--origin-url",
                &origin,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nisshi proxy");
        let addr = format!("127.0.0.1:{port}");
        eventually(
            Duration::from_secs(20),
            "proxy to accept connections",
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
            },
        )
        .await;
        KafkaProxy { child, port }
    }

    /// `host:port` for the client's `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Nothing passes until [`KafkaProxy::resume`].
    pub fn pause(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP proxy");
    }

    pub fn resume(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT proxy");
    }
}

impl Drop for KafkaProxy {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
