//! Copying into write buffers with non-temporal stores.
//!
//! The buffers a log copies batches into are written to the disk and not
//! read again by the CPU, and at a high append rate they were last touched
//! long enough ago to have left the caches. An ordinary copy reads each
//! destination line from memory before writing it (read for ownership) and
//! leaves it in the cache, pushing out lines that will be read again.
//! Non-temporal stores write whole lines straight to memory instead.
//!
//! They are weakly ordered, so [`copy`] ends with a fence: what it copied
//! is ordered before any later store, such as handing the buffer to the
//! kernel for I/O.

/// Copies shorter than this are ordinary ones: a few lines gain nothing.
const STREAM_MIN_BYTES: usize = 1024;

/// Copies `src` into `dst` (of the same length), with non-temporal stores
/// for the whole cache lines of `dst` where the CPU has them, then a fence.
pub fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if src.len() >= STREAM_MIN_BYTES {
        stream_x86_64(dst, src);
        fence();
        return;
    }
    dst.copy_from_slice(src);
}

/// Orders the non-temporal stores before it before every store after it.
fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence is part of SSE, which every x86_64 CPU has.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(target_arch = "x86_64")]
fn stream_x86_64(dst: &mut [u8], src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    const LINE: usize = 64;
    let len = dst.len();
    let head = dst.as_ptr().align_offset(LINE).min(len);
    let lines = (len - head) / LINE;
    let tail = head + lines * LINE;
    dst[..head].copy_from_slice(&src[..head]);
    let d = dst[head..tail].as_mut_ptr();
    let s = src[head..tail].as_ptr();
    for line in 0..lines {
        // SAFETY: SSE2 is part of x86_64. Line `line` lies within
        // `dst[head..tail]` and `src[head..tail]`, which have the same length;
        // `d` is 64-byte aligned, so every store is 16-byte aligned as
        // `_mm_stream_si128` requires; the loads are unaligned ones.
        unsafe {
            let s = s.add(line * LINE).cast::<__m128i>();
            let d = d.add(line * LINE).cast::<__m128i>();
            let a = _mm_loadu_si128(s);
            let b = _mm_loadu_si128(s.add(1));
            let c = _mm_loadu_si128(s.add(2));
            let e = _mm_loadu_si128(s.add(3));
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
        }
    }
    dst[tail..].copy_from_slice(&src[tail..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_byte_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..9000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut dst = vec![0u8; 9100];
        for offset in [0, 1, 15, 16, 63, 64, 65] {
            for len in [0, 1, 63, 64, 1023, 1024, 1025, 4096, 4097, 8999 - 65] {
                for from in [0, 3] {
                    dst.fill(0xAA);
                    copy(&mut dst[offset..offset + len], &src[from..from + len]);
                    assert_eq!(
                        &dst[offset..offset + len],
                        &src[from..from + len],
                        "{offset} {len} {from}"
                    );
                    assert!(dst[..offset].iter().all(|&b| b == 0xAA));
                    assert!(dst[offset + len..].iter().all(|&b| b == 0xAA));
                }
            }
        }
    }
}
