use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::{Service, eventually};

/// `aaa sim serve` as a real process, with helpers for its control API.
pub struct SimProcess {
    pub service: Service,
    /// Base URL of the simulated X API and the control API.
    pub url: String,
    pub bearer: String,
    client: reqwest::Client,
}

pub const SIM_BEARER: &str = "test-bearer-token";

impl SimProcess {
    /// Starts the simulator signing with `consumer_secret`; `args` go after
    /// `aaa sim serve`.
    pub async fn start(bin: &Path, consumer_secret: &str, args: &[&str]) -> SimProcess {
        let mut all = vec!["sim", "serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let service = Service::spawn(
            "sim",
            bin,
            &all,
            &[
                ("AAA_SIM_CONSUMER_SECRET", consumer_secret.to_owned()),
                ("AAA_SIM_BEARER_TOKEN", SIM_BEARER.to_owned()),
            ],
        );
        let addr = service.addr("sim").await;
        SimProcess {
            service,
            url: format!("http://{addr}"),
            bearer: SIM_BEARER.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// A request to the simulated X API with the app's bearer token.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.bearer)
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("simulator control API");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("JSON from the control API")
    }

    /// Generates `n` activities now; returns how many deliveries are owed.
    pub async fn generate(&self, n: usize) -> u64 {
        let answer = self
            .control(
                reqwest::Method::POST,
                "/sim/generate",
                Some(serde_json::json!({"count": n})),
            )
            .await;
        answer["owed"].as_u64().expect("owed count")
    }

    pub async fn summary(&self) -> Value {
        self.control(reqwest::Method::GET, "/sim/truth/summary", None)
            .await
    }

    pub async fn set_faults(&self, faults: Value) {
        self.control(reqwest::Method::PUT, "/sim/faults", Some(faults))
            .await;
    }

    /// X's managed migration, now (`{"overlap_secs": N}` or
    /// `{"gap_secs": N}`, simulated): the accounts' Account Activity
    /// subscriptions become X Activity API ones.
    pub async fn managed_migration(&self, body: Value) -> Value {
        self.control(reqwest::Method::POST, "/sim/managed-migration", Some(body))
            .await
    }

    /// X marks the webhook invalid, as after a failed CRC.
    pub async fn invalidate(&self, webhook_id: &str) {
        let path = format!("/sim/webhooks/{webhook_id}/invalidate");
        self.control(reqwest::Method::POST, &path, None).await;
    }

    /// Lets a replay job held by the `hold` fault run.
    pub async fn release_jobs(&self) {
        self.control(reqwest::Method::POST, "/sim/jobs/release", None)
            .await;
    }

    pub async fn accounts(&self) -> Value {
        self.control(reqwest::Method::GET, "/sim/accounts", None)
            .await
    }

    pub async fn jobs(&self) -> Value {
        self.control(reqwest::Method::GET, "/sim/jobs", None).await
    }

    /// Every owed delivery with its body and attempts.
    pub async fn truth(&self) -> Vec<Value> {
        let text = self
            .client
            .get(format!("{}/sim/truth.jsonl", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Waits until nothing is queued or waiting for a retry; returns the summary.
    pub async fn settled(&self, timeout: Duration) -> Value {
        eventually(
            timeout,
            "the simulator to settle (nothing pending)",
            || async {
                let summary = self.summary().await;
                (summary["pending"] == 0).then_some(summary)
            },
        )
        .await
    }
}

/// How Postgres identifies an activity: (for_user_id, kind, natural key).
pub type Key = (Option<String>, String, String);

/// The keys of the activities a delivery body holds; an error when the body
/// is unreadable or an activity cannot be identified.
pub fn keys_in(body: &[u8]) -> Result<Vec<Key>, String> {
    let envelope = aaa_events::parse_envelope(body).map_err(|e| e.to_string())?;
    envelope
        .activities
        .into_iter()
        .map(|activity| {
            let activity = activity.map_err(|e| e.to_string())?;
            Ok((
                envelope.for_user_id.clone(),
                activity.kind.to_string(),
                activity.natural_key,
            ))
        })
        .collect()
}

/// The keys of the activities in one owed delivery of the ground truth.
pub fn keys_of(owed: &serde_json::Value) -> Vec<Key> {
    keys_in(owed["body"].to_string().as_bytes())
        .unwrap_or_else(|e| panic!("the simulator sends readable, identifiable activity: {e}"))
}

/// The key of every activity the simulator got a 2xx for, sorted: what
/// Postgres must hold, exactly.
pub async fn delivered_keys(sim: &SimProcess) -> Vec<Key> {
    delivered_keys_in(&sim.truth().await)
}

/// [`delivered_keys`] of a ground truth already read.
pub fn delivered_keys_in(truth: &[serde_json::Value]) -> Vec<Key> {
    let mut keys: Vec<Key> = truth
        .iter()
        .filter(|l| l["delivered"] == true)
        .flat_map(keys_of)
        .collect();
    keys.sort();
    // The same activity may be owed more than once (in both formats during
    // an AAA to XAA migration): stored once.
    keys.dedup();
    keys
}

/// The same triple for every row of `events`, sorted.
pub async fn stored_keys(db: &crate::TestDb) -> Vec<Key> {
    let mut stored: Vec<Key> = sqlx::query_as("SELECT for_user_id, kind, natural_key FROM events")
        .fetch_all(&db.pool)
        .await
        .expect("events");
    stored.sort();
    stored
}

/// Activity in the background, like X's: a couple of events every 50 ms,
/// generated by the simulator until [`Traffic::stop`].
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    pub fn start(sim: &SimProcess) -> Traffic {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = format!("{}/sim/generate", sim.url);
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !flag.load(Ordering::SeqCst) {
                let _ = client
                    .post(&url)
                    .json(&serde_json::json!({"count": 2}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Traffic { stop, task }
    }

    pub async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.task.await;
    }
}
