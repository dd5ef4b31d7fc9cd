//! One segment of the log: a memory mapping of its own, holding whole frames, appended by the
//! room alone and read by every writer without a lock. Off the path a line takes: `log.rs`
//! says what a segment is for; here is how its bytes are mapped, published and unmapped.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{frame_len, SEGMENT_BYTES};

/// One mapping of memory holding whole frames, from log offset `base` on.
pub struct Segment {
    base: u64,
    bytes: NonNull<u8>,
    capacity: usize,
    /// How many bytes are written and published; they never change again.
    len: AtomicUsize,
}

// SAFETY: the mapping is owned by the segment. Bytes below `len` are only read; bytes above
// it are written only by the log's single appender (`Log::append` takes `&mut Log`) and
// become readable only after `len` is raised with release ordering.
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

impl Segment {
    pub(super) fn new(base: u64, at_least: usize) -> Arc<Segment> {
        let page = 4096;
        let capacity = at_least.max(SEGMENT_BYTES).div_ceil(page) * page;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                capacity,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let bytes = match mapped {
            libc::MAP_FAILED => std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(capacity, page)
                    .unwrap_or(std::alloc::Layout::new::<u8>()),
            ),
            // mmap never returns null for a request without a hint.
            p => NonNull::new(p.cast::<u8>()).unwrap_or(NonNull::dangling()),
        };
        Arc::new(Segment {
            base,
            bytes,
            capacity,
            len: AtomicUsize::new(0),
        })
    }

    /// The log offset of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The log offset just past the last published byte.
    pub fn end(&self) -> u64 {
        self.base + self.len.load(Ordering::Acquire) as u64
    }

    /// The published bytes between two log offsets, clipped to this segment.
    pub fn bytes(&self, from: u64, to: u64) -> &[u8] {
        let len = self.len.load(Ordering::Acquire);
        let start = (from.saturating_sub(self.base) as usize).min(len);
        let end = (to.saturating_sub(self.base) as usize).clamp(start, len);
        // SAFETY: `start..end` lies within the published bytes, which are never written again
        // and live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr().add(start), end - start) }
    }

    /// Where the frame holding log offset `at` ends: `at` itself when a frame starts there.
    /// Segments begin on a frame boundary, so the walk starts at `base`.
    pub fn frame_end(&self, at: u64) -> u64 {
        let bytes = self.bytes(self.base, u64::MAX);
        let mut start = 0usize;
        while (self.base + start as u64) < at {
            match frame_len(&bytes[start..]) {
                Some(len) => start += len,
                None => break,
            }
        }
        self.base + start as u64
    }

    pub(super) fn room_for(&self, len: usize) -> bool {
        self.capacity - self.len.load(Ordering::Relaxed) >= len
    }

    /// Writes bytes after the published ones and publishes them.
    ///
    /// Only `Log::append` calls this, on the segment at the head.
    pub(super) fn append(&self, frame: &[u8]) {
        let len = self.len.load(Ordering::Relaxed);
        debug_assert!(self.capacity - len >= frame.len());
        // SAFETY: the room was checked, no reader looks past `len`, and there is one appender.
        unsafe {
            std::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                self.bytes.as_ptr().add(len),
                frame.len(),
            );
        }
        self.len.store(len + frame.len(), Ordering::Release);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this size and nothing refers to it now.
        unsafe { libc::munmap(self.bytes.as_ptr().cast(), self.capacity) };
    }
}
