//! When each of the latest appends happened, for the delivery delay the admin port reports:
//! the room stamps each append (`Log::append_at`), and a writer asks, after a send, when the
//! frames it carried were appended. Off the path a line takes.

use std::sync::atomic::Ordering;

use super::LogReader;

/// Appends whose time is remembered, for the delivery delay the admin port reports: a
/// client further behind than this many appends is counted from there.
pub(super) const STAMPS: usize = 4096;

impl LogReader {
    /// When each frame that starts in `from..to` was appended (as [`Log::append_at`] was told),
    /// newest first, as far back as the log remembers ([`STAMPS`] appends).
    /// `appends` is [`LogReader::appends`] as of the writer's pass, read after the head it
    /// sends up to: every frame before that head is stamped by then. Appends are in offset
    /// order, so the frames in `from..to` are found by a binary search, then read newest
    /// first. A frame older than the last [`STAMPS`] appends is not counted.
    pub fn appended_in(&self, appends: u64, from: u64, to: u64, mut each: impl FnMut(u64)) {
        let stamp = |k: u64| &self.shared.stamps[k as usize % STAMPS];
        let oldest = appends.saturating_sub(STAMPS as u64);
        let (mut low, mut high) = (oldest, appends);
        while low < high {
            let middle = low + (high - low) / 2;
            if stamp(middle).0.load(Ordering::Acquire) < to {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        for k in (oldest..low).rev() {
            let (offset, time) = stamp(k);
            if offset.load(Ordering::Acquire) < from {
                return;
            }
            each(time.load(Ordering::Acquire));
        }
    }
}
