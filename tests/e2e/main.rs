//! End-to-end tests of the whole stack against a real Postgres and a real
//! Kafka-protocol broker.
//!
//! One test binary, not one per file: each binary links every dependency, and
//! six of them filled small CI disks.

mod cli;
mod normalize;
mod observability;
mod pipeline;
mod sim;
mod stream;
mod watermark;
