//! The X simulator. For now: a seeded generator of realistic deliveries of
//! every activity kind, and a sender that signs and POSTs them the way X does.

pub mod generate;
pub mod send;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{failed} of {total} deliveries were not acknowledged with 2xx (last: {last})")]
    Undelivered {
        failed: usize,
        total: usize,
        last: String,
    },
}
