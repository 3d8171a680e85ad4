//! The small shared layer under every `aaa` service.

pub mod admin;
pub mod clock;
pub mod events;
pub mod kafka;
pub mod observe;
pub mod shutdown;

pub use clock::Clock;

/// Errors of the shared layer; each service wraps these in its own `Error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid clock configuration: {0}")]
    Clock(String),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error("invalid Kafka property ({0}): expected KEY=VALUE")]
    KafkaProperty(String),
    #[error("admin server failed: {0}")]
    Serve(std::io::Error),
}
