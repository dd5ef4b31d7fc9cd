//! What the numbered log keeps for sessions that come back: the recent past, even where no
//! cursor is in it, and a cursor back into it. Only the resume dialect's log uses this; a
//! plain client's cursor only moves forward.

use std::sync::atomic::Ordering;

use super::{Cursor, Log};

impl Log {
    /// Keeps `bytes` behind the head even when no cursor is in them (at most the retention).
    pub fn keep(&self, bytes: u64) {
        let bytes = bytes.min(self.shared.retention);
        self.shared.keep.store(bytes, Ordering::Relaxed);
    }

    /// The offset of the oldest byte still kept.
    pub fn oldest(&self) -> u64 {
        self.shared.segments().front().map_or(0, |s| s.base())
    }

    /// A cursor at `at`, a frame boundary anywhere in the bytes still kept, or `None` if they
    /// are gone.
    pub fn cursor_back_at(&self, at: u64) -> Option<Cursor> {
        let segments = self.shared.segments();
        let segment = segments
            .iter()
            .rev()
            .find(|s| s.base() <= at && at <= s.end())?;
        Some(Cursor {
            at,
            segment: segment.clone(),
        })
    }
}
