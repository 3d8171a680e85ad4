//! X Activity API's persistent stream, `GET /2/activity/stream` (served by
//! `http::stream`): with `--stream`, XAA deliveries go to the open stream
//! connections instead of webhook POSTs. X does not retry on a stream: what
//! is sent while nobody is connected is owed and lost, unless a reconnect
//! asks for it with `backfill_minutes` (at most 5). Framing follows X's
//! other v2 streams (X does not document this one's): one JSON object per
//! `\r\n`-terminated line, and a bare `\r\n` keep-alive every few seconds.

use std::sync::Arc;
use std::time::Duration;

use aaa_common::observe::InternalEvent;
use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};

use crate::context::Sim;
use crate::events::{DeliveryAttempted, StreamAccepted, StreamRefused};
use crate::state::{Attempt, Envelope};

/// Real time between keep-alives.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Does the stream carry deliveries in this envelope?
pub fn carries(sim: &Sim, envelope: Envelope) -> bool {
    sim.args.stream && envelope == Envelope::Xaa
}

/// A stream attempt is live and final (X does not retry on a stream).
fn record(sim: &Sim, seq: u64, outcome: &str, ok: bool) {
    DeliveryAttempted { via: "stream", ok }.emit();
    let attempt = Attempt::live(sim.clock.now(), outcome, ok);
    let mut world = sim.world();
    world.record_attempt(seq, attempt);
    world.settle(seq);
}

/// Sends one owed delivery to every open connection (once: no retries).
pub fn send(sim: &Sim, seq: u64, body: Arc<Vec<u8>>) {
    let ok = sim.stream.send(seq, body);
    record(sim, seq, if ok { "stream" } else { "no_stream" }, ok);
}

/// Opens a connection that first sends what the last `backfill` minutes
/// owed on the stream, oldest first, then every new delivery, with
/// keep-alives between. `Err`: the app holds every connection X allows
/// (until when one is free, if known).
pub fn connect(
    sim: &Sim,
    backfill: i64,
) -> Result<impl futures::Stream<Item = Bytes> + use<>, Option<DateTime<Utc>>> {
    let slot = match sim.stream.take_slot(
        sim.clock,
        sim.args.stream_connection_limit,
        TimeDelta::seconds(sim.args.stream_lockout_secs as i64),
    ) {
        Ok(slot) => slot,
        Err(until) => {
            StreamRefused.emit();
            return Err(until);
        }
    };
    let rx = sim.stream.subscribe();
    let since = sim.clock.now() - TimeDelta::minutes(backfill);
    let replayed: Vec<(u64, Arc<Vec<u8>>)> = if backfill > 0 {
        let world = sim.world();
        world
            .owed
            .iter()
            .filter(|o| o.created_at >= since && carries(sim, o.envelope))
            .map(|o| (o.seq, o.body.clone()))
            .collect()
    } else {
        Vec::new()
    };
    for (seq, _) in &replayed {
        record(sim, *seq, "stream backfill", true);
    }
    StreamAccepted.emit();
    tracing::info!(
        message = "stream connected",
        backfill_minutes = backfill,
        backfilled = replayed.len()
    );
    // The slot lives as long as the stream: dropped with the connection.
    let state = (rx, replayed.into_iter(), slot);
    Ok(futures::stream::unfold(
        state,
        |(mut rx, mut backlog, slot)| async move {
            if let Some((_, body)) = backlog.next() {
                return Some((line(&body), (rx, backlog, slot)));
            }
            tokio::select! {
                received = rx.recv() => match received {
                    Ok((_, body)) => Some((line(&body), (rx, backlog, slot))),
                    // Too slow, or the simulator stopped: X closes the connection.
                    Err(_) => None,
                },
                _ = tokio::time::sleep(KEEP_ALIVE) => Some((Bytes::from_static(b"\r\n"), (rx, backlog, slot))),
            }
        },
    ))
}

fn line(body: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(body.len() + 2);
    line.extend_from_slice(body);
    line.extend_from_slice(b"\r\n");
    Bytes::from(line)
}
