//! What every service reports about itself, and the shape every crate's
//! events take.

/// Something that happened, logged and counted in one place (Vector's
/// internal events): each crate's `events.rs` holds one type per event.
pub trait InternalEvent {
    fn emit(self);
}

pub const BUILD_INFO: &str = "aaa_build_info";

/// The running version, as a gauge at 1.
pub struct BuildInfo;

impl InternalEvent for BuildInfo {
    fn emit(self) {
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    }
}
