//! X Activity API's persistent stream, `GET /2/activity/stream`: with
//! `--stream`, XAA deliveries go to the open stream connections instead of
//! webhook POSTs. X does not retry on a stream: what is sent while nobody is
//! connected is owed and lost, unless a reconnect asks for it with
//! `backfill_minutes` (at most 5). Framing follows X's other v2 streams
//! (X does not document this one's): one JSON object per `\r\n`-terminated
//! line, and a bare `\r\n` keep-alive every few seconds.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use chrono::TimeDelta;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::Sim;
use crate::api::{bearer_ok, unauthorized, x_error};
use crate::state::Route;

/// Real time between keep-alives.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Lines a connection may fall behind before X would drop it.
const BACKLOG: usize = 10_000;

/// The open stream connections.
pub struct StreamHub {
    tx: broadcast::Sender<(u64, Arc<Vec<u8>>)>,
}

impl Default for StreamHub {
    fn default() -> Self {
        StreamHub {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

pub fn router() -> Router<Sim> {
    Router::new().route("/2/activity/stream", get(connect))
}

/// Is this owed delivery one the stream carries?
pub fn carries(sim: &Sim, body: &[u8]) -> bool {
    sim.args.stream && body.starts_with(b"{\"data\"")
}

/// A stream attempt is live and final (X does not retry on a stream).
fn record(sim: &Sim, seq: u64, outcome: &str, ok: bool) {
    crate::delivery::record_via(sim, seq, Route::Live, "stream", None, outcome, ok);
    crate::delivery::settle(sim, seq);
}

/// Sends one owed delivery to every open connection (once: no retries).
pub fn send(sim: &Sim, seq: u64, body: Arc<Vec<u8>>) {
    let ok = sim.stream.tx.send((seq, body)).is_ok();
    record(sim, seq, if ok { "stream" } else { "no_stream" }, ok);
}

#[derive(Deserialize)]
struct Params {
    backfill_minutes: Option<String>,
}

async fn connect(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    if !bearer_ok(&sim, &headers) {
        return unauthorized();
    }
    let backfill = match params.backfill_minutes.as_deref().map(str::parse::<i64>) {
        None => 0,
        Some(Ok(n)) if (0..=5).contains(&n) => n,
        Some(_) => {
            return x_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "backfill_minutes must be between 0 and 5",
            );
        }
    };
    let rx = sim.stream.tx.subscribe();
    // What the last `backfill` minutes owed on the stream, oldest first.
    let since = sim.clock.now() - TimeDelta::minutes(backfill);
    let replayed: Vec<(u64, Arc<Vec<u8>>)> = if backfill > 0 {
        let world = sim.world();
        world
            .owed
            .iter()
            .filter(|o| o.created_at >= since && carries(&sim, &o.body))
            .map(|o| (o.seq, o.body.clone()))
            .collect()
    } else {
        Vec::new()
    };
    for (seq, _) in &replayed {
        record(&sim, *seq, "stream backfill", true);
    }
    metrics::counter!("aaa_sim_stream_connections_total").increment(1);
    tracing::info!(
        message = "stream connected",
        backfill_minutes = backfill,
        backfilled = replayed.len()
    );
    let state = (rx, replayed.into_iter());
    let lines = futures::stream::unfold(state, |(mut rx, mut backlog)| async move {
        if let Some((_, body)) = backlog.next() {
            return Some((
                Ok::<_, std::convert::Infallible>(line(&body)),
                (rx, backlog),
            ));
        }
        tokio::select! {
            received = rx.recv() => match received {
                Ok((_, body)) => Some((Ok(line(&body)), (rx, backlog))),
                // Too slow, or the simulator stopped: X closes the connection.
                Err(_) => None,
            },
            _ = tokio::time::sleep(KEEP_ALIVE) => Some((Ok(Bytes::from_static(b"\r\n")), (rx, backlog))),
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

fn line(body: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(body.len() + 2);
    line.extend_from_slice(body);
    line.extend_from_slice(b"\r\n");
    Bytes::from(line)
}
