//! The app's stream connections as X counts them: open ones, and dropped
//! ones still counted for the lock-out; and the channel every open
//! connection reads.

use std::sync::Arc;

use aaa_common::Clock;
use aaa_common::observe::InternalEvent;
use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::broadcast;

use crate::events::StreamOpen;

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
    held_until: Vec<DateTime<Utc>>,
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
pub struct Slot {
    slots: Arc<std::sync::Mutex<Slots>>,
    clock: Clock,
    lockout: TimeDelta,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.open = slots.open.saturating_sub(1);
        if self.lockout > TimeDelta::zero() {
            slots.held_until.push(self.clock.now() + self.lockout);
        }
        StreamOpen {
            connections: slots.open,
        }
        .emit();
    }
}

impl StreamHub {
    /// Takes a slot of at most `limit`, or says until when none is free
    /// (`None`: not known). A slot given back keeps counting for `lockout`.
    pub fn take_slot(
        &self,
        clock: Clock,
        limit: usize,
        lockout: TimeDelta,
    ) -> Result<Slot, Option<DateTime<Utc>>> {
        let now = clock.now();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.held_until.retain(|until| *until > now);
        if slots.open + slots.held_until.len() >= limit {
            return Err(slots.held_until.iter().min().copied());
        }
        slots.open += 1;
        StreamOpen {
            connections: slots.open,
        }
        .emit();
        Ok(Slot {
            slots: self.slots.clone(),
            clock,
            lockout,
        })
    }

    /// Sends a line to every open connection; `false` when none is open.
    pub fn send(&self, seq: u64, body: Arc<Vec<u8>>) -> bool {
        self.tx.send((seq, body)).is_ok()
    }

    /// What is sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<(u64, Arc<Vec<u8>>)> {
        self.tx.subscribe()
    }
}
