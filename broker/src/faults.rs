//! Crash points for tests: named places where the broker kills itself,
//! as a power cut would, when the `SLUICE_CRASH_AT` variable names them
//! (comma-separated). The end-to-end tests use them to crash between two
//! durable steps that no outside signal can hit reliably. Unset, a check
//! costs one load of an initialized `OnceLock`.

use std::sync::OnceLock;

use tracing::error;

/// The transaction coordinator has made PrepareCommit/PrepareAbort durable
/// and written no marker yet.
pub const TXN_AFTER_PREPARE: &str = "txn-after-prepare";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("SLUICE_CRASH_AT")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Kills the process on the spot if `point` is armed.
pub fn crash_point(point: &str) {
    if armed().iter().any(|p| p == point) {
        error!(point, "crash point reached: aborting (SLUICE_CRASH_AT)");
        std::process::abort();
    }
}
