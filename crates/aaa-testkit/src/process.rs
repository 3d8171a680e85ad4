use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::eventually;

/// An `aaa` service running as a real process. Its JSON log lines (stdout)
/// and stderr are collected so tests can wait on what it says.
pub struct Service {
    name: String,
    child: Option<Child>,
    output: Arc<Mutex<Vec<String>>>,
    /// The threads reading its stdout and stderr: they end at the pipes'
    /// end, which may come after the process has exited.
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn collect(
    stream: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    // AAA_TEST_ECHO=name shows that service's output live, for debugging.
    let echo = std::env::var("AAA_TEST_ECHO").ok();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if echo.as_deref().is_some_and(|e| line.contains(e)) {
                eprintln!("{line}");
            }
            into.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    })
}

impl Service {
    pub fn spawn(name: &str, bin: &Path, args: &[&str], env: &[(&str, String)]) -> Service {
        let mut command = Command::new(bin);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("AAA_LOG_FORMAT", "json")
            // AAA_TEST_LOG=debug (a filter) for more detail when debugging.
            .env(
                "AAA_LOG",
                std::env::var("AAA_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), output.clone()),
            collect(child.stderr.take().expect("piped stderr"), output.clone()),
        ];
        Service {
            name: name.to_owned(),
            child: Some(child),
            output,
            readers,
        }
    }

    pub fn output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Its last `n` lines of output, for a failure message.
    pub fn output_tail(&self, n: usize) -> String {
        let output = self.output();
        output[output.len().saturating_sub(n)..].join("\n")
    }

    fn log_events(&self) -> Vec<Value> {
        self.output()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits until a log event satisfies `matches`; returns it.
    pub async fn wait_for_log(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = tokio::time::timeout(
            timeout,
            eventually(timeout + Duration::from_secs(1), what, || {
                let hit = self.log_events().into_iter().find(|e| matches(e));
                async move { hit }
            }),
        )
        .await;
        match found {
            Ok(event) => event,
            Err(_) => panic!(
                "{}: timed out after {timeout:?} waiting for {what}; output:\n{}",
                self.name,
                self.output().join("\n")
            ),
        }
    }

    /// The address a listener reported (`listening`, listener = `name`).
    pub async fn addr(&self, listener: &str) -> SocketAddr {
        let event = self
            .wait_for_log(
                &format!("{listener} listener address"),
                Duration::from_secs(30),
                |e| e["message"] == "listening" && e["listener"] == listener,
            )
            .await;
        event["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad listening event {event}"))
    }

    /// The operating system's id of the running process (for /proc readings).
    pub fn os_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("service running").id() as i32)
    }

    /// Hard kill (SIGKILL): no cleanup, no offset commit, like a crashed pod.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP): alive, holding its connections and
    /// leases, doing nothing, like a node that hangs.
    pub fn freeze(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP");
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT");
    }

    /// Asks the service to shut down gracefully (SIGTERM); see [`Self::wait_exit`].
    pub fn sigterm(&self) {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
    }

    /// Waits for the process to exit on its own, and for everything it
    /// wrote to be in [`Self::output`].
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("service running");
        let status = eventually(timeout, &format!("{} to exit", self.name), || {
            let status = child.try_wait().expect("try_wait");
            async move { status }
        })
        .await;
        // The pipes end when the last process holding them does: bounded in
        // case the service left a child behind.
        let readers = std::mem::take(&mut self.readers);
        let drained = tokio::task::spawn_blocking(move || {
            for reader in readers {
                let _ = reader.join();
            }
        });
        let _ = tokio::time::timeout(timeout, drained).await;
        status
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
