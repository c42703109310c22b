//! The harness's clock: microseconds since the Unix epoch, read as a
//! monotonic offset from one wall-clock reading taken at first use. Every
//! executor of the process reads the same clock, so a stamp written by a
//! producer and read by a consumer on another core compare exactly, and
//! wall-clock steps (NTP) during a run cannot make a latency negative.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Base {
    instant: Instant,
    unix_us: u64,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| Base {
        instant: Instant::now(),
        unix_us: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    })
}

/// The time of `instant` on the harness clock, in µs since the Unix epoch.
pub fn us_at(instant: Instant) -> u64 {
    let b = base();
    let offset_us = instant.saturating_duration_since(b.instant).as_micros() as u64;
    b.unix_us + offset_us
}

#[cfg(test)]
fn now_us() -> u64 {
    us_at(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_clock_follows_instants_and_the_wall() {
        now_us(); // takes the base reading, so `a` is not before it
        let a = Instant::now();
        let b = a + Duration::from_millis(5);
        assert_eq!(us_at(b) - us_at(a), 5000);
        let wall_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_micros() as u64;
        assert!(now_us().abs_diff(wall_us) < 1_000_000);
    }
}
