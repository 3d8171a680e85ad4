//! What every service reports about itself.

use crate::observe::InternalEvent;

pub const BUILD_INFO: &str = "aaa_build_info";

/// The running version, as a gauge at 1.
pub struct BuildInfo;

impl InternalEvent for BuildInfo {
    fn emit(self) {
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    }
}
