//! Domain newtypes: an offset is never a bare integer.

use std::fmt;

/// The offset of a record within one partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    /// The offset `count` records further on.
    pub fn plus(self, count: i64) -> Offset {
        debug_assert!(count >= 0);
        Offset(self.0 + count)
    }

    /// Records between `earlier` and `self`.
    pub fn since(self, earlier: Offset) -> i64 {
        self.0 - earlier.0
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
