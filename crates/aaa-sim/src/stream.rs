//! X Activity API's persistent stream, `GET /2/activity/stream`: with
//! `--stream`, XAA deliveries go to the open stream connections instead of
//! webhook POSTs. X does not retry on a stream: what is sent while nobody is
//! connected is owed and lost, unless a reconnect asks for it with
//! `backfill_minutes` (at most 5). Framing follows X's other v2 streams
//! (X does not document this one's): one JSON object per `\r\n`-terminated
//! line, and a bare `\r\n` keep-alive every few seconds.

use aaa_common::observe::InternalEvent;
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
    slots: Arc<std::sync::Mutex<Slots>>,
}

/// What counts against the app's connection limit: open connections, and
/// dropped ones X still counts (until the given simulated time).
#[derive(Default)]
struct Slots {
    open: usize,
    held_until: Vec<chrono::DateTime<chrono::Utc>>,
}

impl Default for StreamHub {
    fn default() -> Self {
        StreamHub {
            tx: broadcast::channel(BACKLOG).0,
            slots: Arc::default(),
        }
    }
}

/// One open connection's slot: when the client goes away (X cannot tell an
/// abrupt drop from a close), it keeps counting for the lock-out.
struct Slot {
    slots: Arc<std::sync::Mutex<Slots>>,
    clock: aaa_common::Clock,
    lockout: TimeDelta,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.open = slots.open.saturating_sub(1);
        if self.lockout > TimeDelta::zero() {
            slots.held_until.push(self.clock.now() + self.lockout);
        }
        crate::events::StreamOpen {
            connections: slots.open,
        }
        .emit();
    }
}

/// Takes a slot, or says until when none is free (`None`: not known).
fn take_slot(sim: &Sim) -> Result<Slot, Option<chrono::DateTime<chrono::Utc>>> {
    let now = sim.clock.now();
    let mut slots = sim.stream.slots.lock().unwrap_or_else(|p| p.into_inner());
    slots.held_until.retain(|until| *until > now);
    if slots.open + slots.held_until.len() >= sim.args.stream_connection_limit {
        return Err(slots.held_until.iter().min().copied());
    }
    slots.open += 1;
    crate::events::StreamOpen {
        connections: slots.open,
    }
    .emit();
    Ok(Slot {
        slots: sim.stream.slots.clone(),
        clock: sim.clock,
        lockout: TimeDelta::seconds(sim.args.stream_lockout_secs as i64),
    })
}

/// X's answer past the connection limit (v2 streaming's error shape).
fn too_many_connections(until: Option<chrono::DateTime<chrono::Utc>>) -> Response {
    let body = serde_json::json!({
        "title": "ConnectionException",
        "detail": "This stream is currently at the maximum allowed connection limit.",
        "connection_issue": "TooManyConnections",
        "type": "https://api.x.com/2/problems/streaming-connection",
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    // The first whole second at which a slot is free again.
    let reset =
        until.map(|until| until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0));
    if let Some(reset) = reset
        && let Ok(value) = reset.to_string().parse()
    {
        response.headers_mut().insert("x-rate-limit-reset", value);
    }
    response
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
    let slot = match take_slot(&sim) {
        Ok(slot) => slot,
        Err(until) => {
            crate::events::StreamRefused.emit();
            return too_many_connections(until);
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
    crate::events::StreamAccepted.emit();
    tracing::info!(
        message = "stream connected",
        backfill_minutes = backfill,
        backfilled = replayed.len()
    );
    // The slot lives as long as the body: dropped with the connection.
    let state = (rx, replayed.into_iter(), slot);
    let lines = futures::stream::unfold(state, |(mut rx, mut backlog, slot)| async move {
        if let Some((_, body)) = backlog.next() {
            return Some((
                Ok::<_, std::convert::Infallible>(line(&body)),
                (rx, backlog, slot),
            ));
        }
        tokio::select! {
            received = rx.recv() => match received {
                Ok((_, body)) => Some((Ok(line(&body)), (rx, backlog, slot))),
                // Too slow, or the simulator stopped: X closes the connection.
                Err(_) => None,
            },
            _ = tokio::time::sleep(KEEP_ALIVE) => Some((Ok(Bytes::from_static(b"\r\n")), (rx, backlog, slot))),
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
