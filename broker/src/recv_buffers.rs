//! Buffers that large requests are read into, kept for reuse.
//!
//! A frame of `OWN_BUFFER_FRAME_BYTES` or more is read from the socket
//! into a buffer of its own, which its handler, and then the batch cache,
//! hold as `Bytes` until the last slice of it is dropped. A socket reads
//! only into initialized memory, so fresh memory for every such frame cost
//! a pass to zero it and the kernel's page faults on it: a fifth of the
//! shard's time at the maximum produce rate. Instead, a buffer whose last
//! slice is dropped goes back to a pool of the thread that drops it, and
//! the next large frame of a size near it is read over its old contents.
//!
//! Buffers come in size classes, four to each doubling, so that frames of
//! nearby sizes share them and a buffer is at most a quarter larger than
//! the frame it holds; when a class has none free, a buffer of a class up
//! to half as large again is used. A thread keeps at most
//! `POOLED_BYTES_MAX` of free buffers; past it, the buffers of the size
//! least recently asked for are freed first.

use std::cell::RefCell;
use std::collections::BTreeMap;

use bytes::Bytes;

/// Frames at least this large are read into a buffer of their own, from
/// the pool; smaller ones share the connection's read buffer.
pub const OWN_BUFFER_FRAME_BYTES: usize = 64 << 10;
/// Free buffer bytes a thread's pool keeps at most. Frames come back when
/// the batch cache lets go of them, in bursts and in other sizes than are
/// being read at the time; what the pool cannot keep goes back to the
/// allocator, and the next frames are read into fresh pages, whose faults
/// the shard pays, and which stalled it: at half the maximum produce rate,
/// 256 MiB instead of 64 MiB (with `LARGER_CLASS_SHARE`) cut the faults by
/// two thirds or more, and the produce p99's median over runs from 550 to
/// 194 ms (docs/PERFORMANCE.md).
pub const POOLED_BYTES_MAX: usize = 256 << 20;
/// Size classes in each doubling of size.
const CLASSES_PER_DOUBLING: usize = 4;
/// With no free buffer of a frame's class, one of a larger class is taken,
/// at most this much (a fraction) larger: frames come back in other sizes
/// than those being read, and a buffer a little too large costs less than
/// fresh memory.
const LARGER_CLASS_SHARE: (usize, usize) = (1, 2);

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A buffer of at least `size` bytes to read a frame into: one given back
/// earlier, with what it held then, or new and zeroed.
pub fn take(size: usize) -> Box<[u8]> {
    let class = class_of(size);
    POOL.with(|pool| pool.borrow_mut().take(class))
        .unwrap_or_else(|| vec![0u8; class].into_boxed_slice())
}

/// The first `len` bytes of `buf` (from `take`) as `Bytes`; the buffer goes
/// back to the pool when the last of them is dropped.
pub fn freeze(buf: Box<[u8]>, len: usize) -> Bytes {
    assert!(len <= buf.len());
    Bytes::from_owner(Owned { buf, len })
}

/// The class of a frame of `size` bytes: the size rounded up to the next
/// of `CLASSES_PER_DOUBLING` steps between two powers of two.
fn class_of(size: usize) -> usize {
    let size = size.max(OWN_BUFFER_FRAME_BYTES);
    let floor = 1usize << (usize::BITS - 1 - size.leading_zeros());
    let step = floor / CLASSES_PER_DOUBLING;
    size.div_ceil(step) * step
}

/// The owner of a frame's bytes, behind its `Bytes`.
struct Owned {
    buf: Box<[u8]>,
    len: usize,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // A thread being torn down has no pool left: the buffer is freed.
        let _ = POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                pool.give(buf);
            }
        });
    }
}

#[derive(Default)]
struct Pool {
    classes: BTreeMap<usize, Class>,
    /// Bytes of the free buffers held.
    bytes: usize,
    /// Counts takes, to tell which class was asked for least recently.
    clock: u64,
}

#[derive(Default)]
struct Class {
    free: Vec<Box<[u8]>>,
    /// `clock` when a buffer of this class was last asked for.
    wanted_at: u64,
}

impl Pool {
    fn take(&mut self, class: usize) -> Option<Box<[u8]>> {
        self.clock += 1;
        self.classes.entry(class).or_default().wanted_at = self.clock;
        // This class's buffers first, then the next larger ones'.
        let larger_max = class + class * LARGER_CLASS_SHARE.0 / LARGER_CLASS_SHARE.1;
        let buf = self
            .classes
            .range_mut(class..=larger_max)
            .find_map(|(_, c)| c.free.pop())?;
        self.bytes -= buf.len();
        Some(buf)
    }

    fn give(&mut self, buf: Box<[u8]>) {
        let size = buf.len();
        if size > POOLED_BYTES_MAX || !self.classes.contains_key(&size) {
            return; // not from `take`
        }
        while self.bytes + size > POOLED_BYTES_MAX {
            let stalest = self
                .classes
                .iter()
                .filter(|(_, c)| !c.free.is_empty())
                .min_by_key(|(_, c)| c.wanted_at)
                .map(|(&class, _)| class);
            match stalest {
                Some(class) if class != size => {
                    let freed = self.classes.get_mut(&class).and_then(|c| c.free.pop());
                    self.bytes -= freed.map_or(0, |b| b.len());
                }
                // This buffer's class is the least wanted: it goes.
                _ => return,
            }
        }
        self.bytes += size;
        self.classes.get_mut(&size).expect("checked above").free.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_at_most_a_quarter() {
        assert_eq!(class_of(1), OWN_BUFFER_FRAME_BYTES);
        assert_eq!(class_of(64 << 10), 64 << 10);
        assert_eq!(class_of((64 << 10) + 1), 80 << 10);
        assert_eq!(class_of(100 << 10), 112 << 10);
        assert_eq!(class_of((1 << 20) - 1), 1 << 20);
        assert_eq!(class_of((1 << 20) + 1), (1 << 20) + (256 << 10));
        for size in [(64 << 10) + 7, 300_000, 1_048_577, 5_000_000, 100 << 20] {
            let class = class_of(size);
            assert!(class >= size && class - size <= size / 4, "{size} -> {class}");
        }
    }

    #[test]
    fn a_dropped_frame_buffer_is_reused_as_it_was() {
        let mut buf = take(200_000);
        assert_eq!(buf.len(), class_of(200_000));
        assert!(buf.iter().all(|&b| b == 0));
        buf[..5].copy_from_slice(b"hello");
        let frame = freeze(buf, 150_000);
        assert_eq!(frame.len(), 150_000);
        let slice = frame.slice(1..3);
        drop(frame);
        assert_eq!(&slice[..], b"el");
        // Still held by the slice: a take gets another buffer.
        let other = take(210_000);
        assert!(other.iter().all(|&b| b == 0));
        drop(slice);
        let again = take(210_000);
        assert_eq!(&again[..5], b"hello");
        // Given back through the pool too, so the next take is this one.
        drop(freeze(other, 10));
    }

    #[test]
    fn a_class_with_none_free_takes_a_buffer_at_most_half_as_large_again() {
        let mut pool = Pool::default();
        let class = class_of(200_000);
        let larger = class_of(class + 1);
        let too_large = class_of(class * 3 / 2 + 1);
        assert!(larger <= class * 3 / 2 && too_large > class * 3 / 2);
        for c in [class, larger, too_large] {
            assert!(pool.take(c).is_none());
        }
        pool.give(vec![0u8; too_large].into_boxed_slice());
        assert!(pool.take(class).is_none());
        pool.give(vec![0u8; larger].into_boxed_slice());
        pool.give(vec![0u8; class].into_boxed_slice());
        // Its own class first, then the smallest larger one that has any.
        assert_eq!(pool.take(class).map(|b| b.len()), Some(class));
        assert_eq!(pool.take(class).map(|b| b.len()), Some(larger));
        assert!(pool.take(class).is_none());
        assert_eq!(pool.bytes, too_large);
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit_and_frees_the_least_wanted_size_first() {
        let mut pool = Pool::default();
        let big = POOLED_BYTES_MAX / 4;
        let small = big / 16;
        assert!(pool.take(big).is_none());
        assert!(pool.take(small).is_none());
        for _ in 0..4 {
            pool.give(vec![0u8; big].into_boxed_slice());
        }
        assert_eq!(pool.bytes, POOLED_BYTES_MAX);
        // The small class was asked for after the big one: a small buffer
        // given back frees a big one to make room.
        pool.give(vec![0u8; small].into_boxed_slice());
        assert_eq!(pool.bytes, 3 * big + small);
        assert_eq!(pool.classes[&big].free.len(), 3);
        // Now the big class is wanted more recently: small buffers fill
        // the room left, and those that do not fit are freed themselves.
        assert!(pool.take(big).is_some());
        for _ in 0..40 {
            pool.give(vec![0u8; small].into_boxed_slice());
        }
        assert_eq!(pool.bytes, POOLED_BYTES_MAX);
        assert_eq!(pool.classes[&big].free.len(), 2);
        assert_eq!(pool.classes[&small].free.len(), 32);
        // A buffer of a size never taken is not the pool's.
        let before = pool.bytes;
        pool.give(vec![0u8; 12345].into_boxed_slice());
        assert_eq!(pool.bytes, before);
    }
}
