//! Closed-loop HTTP load from `wrk` (Debian's package): a fixed number of
//! connections, each sending the next request as soon as the last answered.
//! A Lua script sets the request and prints the results as one JSON line.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::Error;

const SCRIPT: &str = r#"
local function read(path)
  local f = assert(io.open(path, "rb")); local s = f:read("*a"); f:close(); return s
end
wrk.method = os.getenv("AAA_BENCH_METHOD")
if wrk.method == "POST" then
  wrk.body = read(os.getenv("AAA_BENCH_BODY"))
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["x-twitter-webhooks-signature"] = os.getenv("AAA_BENCH_SIGNATURE")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\n{"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"#;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub errors_connect: u64,
    pub errors_read: u64,
    pub errors_write: u64,
    /// Answers other than 2xx/3xx.
    pub errors_status: u64,
    pub errors_timeout: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl WrkResult {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }

    pub fn errors(&self) -> u64 {
        self.errors_connect
            + self.errors_read
            + self.errors_write
            + self.errors_status
            + self.errors_timeout
    }
}

/// The request wrk repeats.
pub enum Request<'a> {
    Get,
    Post { body: &'a Path, signature: &'a str },
}

pub struct Load {
    pub connections: u32,
    pub duration: Duration,
}

/// The JSON line the script prints last.
pub fn parse_output(stdout: &str) -> Option<WrkResult> {
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
}

pub fn run(
    url: &str,
    request: Request<'_>,
    load: &Load,
    scratch: &Path,
) -> Result<WrkResult, Error> {
    let script = scratch.join("bench.lua");
    std::fs::write(&script, SCRIPT)?;
    let mut command = Command::new("wrk");
    command
        .args(["--threads", "1", "--timeout", "5s"])
        .arg(format!("--connections={}", load.connections))
        .arg(format!("--duration={}s", load.duration.as_secs().max(1)))
        .arg("--script")
        .arg(&script)
        .arg(url);
    match request {
        Request::Get => {
            command.env("AAA_BENCH_METHOD", "GET");
        }
        Request::Post { body, signature } => {
            command
                .env("AAA_BENCH_METHOD", "POST")
                .env("AAA_BENCH_BODY", body)
                .env("AAA_BENCH_SIGNATURE", signature);
        }
    }
    let output = command.output().map_err(|e| {
        Error::Setup(format!(
            "cannot run wrk (scripts/bench.sh installs it): {e}"
        ))
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_output(&stdout).ok_or_else(|| {
        Error::Setup(format!(
            "wrk printed no result: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_json_line_is_the_result() {
        let out = "Running 1s test\n  1 threads\n\n{\"requests\":1000,\"duration_us\":2000000,\"errors_connect\":0,\"errors_read\":0,\"errors_write\":0,\"errors_status\":3,\"errors_timeout\":1,\"p50_us\":100,\"p99_us\":900,\"p999_us\":2000,\"max_us\":5000}\n";
        let r = parse_output(out).unwrap();
        assert_eq!(r.requests_per_second(), 500.0);
        assert_eq!(r.errors(), 4);
        assert!(parse_output("no json here").is_none());
    }
}
