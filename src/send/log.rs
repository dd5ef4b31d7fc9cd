//! The room's log: every frame the room sends to everyone, appended once, read by every writer.
//!
//! The room frames a line once and appends the bytes here. A client is only a [`Cursor`], an
//! offset into the log: sending to it means sending the bytes from its cursor to the head.
//! So a line costs one append however many clients there are, and a thousand joins cost a
//! thousand appends, not a million queue entries.
//!
//! The log is a list of segments. A segment holds whole frames, and bytes once appended are
//! never written again, so a writer can send them while the room goes on appending. A segment
//! is dropped from the list, at the next trim, when no cursor is in it any more, or when it
//! falls more than the retention behind the head (a client still in it is then too slow, and
//! is evicted). Each segment is its own memory mapping, unmapped when the last holder lets go:
//! the list, the cursors in it, and a writer's snapshot for the pass it is in.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Room for about a thousand short lines. Larger frames get a segment of their own size.
pub const SEGMENT_BYTES: usize = 64 * 1024;

/// What the room and the writers share.
struct Shared {
    /// The offset just past the last whole frame: where the next one will start.
    head: AtomicU64,
    /// Segments someone may still need, oldest first; the last is the one being filled.
    segments: Mutex<VecDeque<Arc<Segment>>>,
    retention: u64,
    /// How many appends so far: how a writer tells how fast lines arrive.
    appends: AtomicU64,
    /// Bytes kept behind the head even when no cursor is in them: the recent past, for
    /// clients that come back to resume.
    keep: AtomicU64,
    /// For the last [`STAMPS`] appends, by append count: where each began, and when
    /// (on the clock the room gives, `figures::since_start_us`). Written by the room alone,
    /// before it publishes the head.
    stamps: Box<[(AtomicU64, AtomicU64)]>,
}

impl Shared {
    fn segments(&self) -> MutexGuard<'_, VecDeque<Arc<Segment>>> {
        // The list is consistent after every statement, so a panic elsewhere cannot spoil it.
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the oldest segments that no cursor is in (the list holds the only reference) and
    /// that lie wholly more than `keep` behind the head, and those more than the retention
    /// behind it.
    fn trim(&self) {
        let head = self.head.load(Ordering::SeqCst);
        let keep = self.keep.load(Ordering::Relaxed);
        let mut segments = self.segments();
        while segments.len() > 1 {
            let oldest = &segments[0];
            let unread = Arc::strong_count(oldest) == 1 && oldest.end() + keep <= head;
            if unread || oldest.end() + self.retention <= head {
                segments.pop_front();
            } else {
                break;
            }
        }
    }
}

/// The appending end of the log, owned by the room: one appender, so one order.
pub struct Log {
    shared: Arc<Shared>,
    /// The segment being filled (also the last in the shared list).
    filling: Arc<Segment>,
}

impl Log {
    /// A log that keeps at least `retention` bytes behind the head for clients that lag.
    pub fn new(retention: u64) -> Log {
        let filling = Segment::new(0, SEGMENT_BYTES);
        Log {
            shared: Arc::new(Shared {
                head: AtomicU64::new(0),
                segments: Mutex::new(VecDeque::from([filling.clone()])),
                retention,
                appends: AtomicU64::new(0),
                keep: AtomicU64::new(0),
                stamps: (0..STAMPS)
                    .map(|_| (AtomicU64::new(u64::MAX), AtomicU64::new(0)))
                    .collect(),
            }),
            filling,
        }
    }

    /// The reading end, for writers and readers.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    /// Where the next frame will start.
    pub fn head(&self) -> u64 {
        self.shared.head.load(Ordering::Relaxed)
    }

    /// A cursor at `at`: the start of a frame just appended, or the head. Both lie in the
    /// segment being filled.
    pub fn cursor_at(&self, at: u64) -> Cursor {
        debug_assert!(self.filling.base() <= at && at <= self.head());
        Cursor {
            at,
            segment: self.filling.clone(),
        }
    }

    /// Appends one or more whole frames and returns the offset where they start (for tests,
    /// which need no time).
    #[cfg(test)]
    pub fn append(&mut self, frame: &[u8]) -> u64 {
        self.append_at(frame, 0)
    }

    /// [`Log::append`], remembering that it happened at `now_us`, for the delivery delay.
    pub fn append_at(&mut self, frame: &[u8], now_us: u64) -> u64 {
        let start = self.head();
        if !self.filling.room_for(frame.len()) {
            // Only a new log's first segment is ever empty: every other one is made for a
            // frame and gets it at once.
            let was_empty = self.filling.base() == start;
            self.filling = Segment::new(start, frame.len());
            let mut segments = self.shared.segments();
            if was_empty {
                segments.pop_back(); // no two segments start at the same offset
            }
            segments.push_back(self.filling.clone());
            drop(segments);
            self.shared.trim();
        }
        self.filling.append(frame);
        let count = self.shared.appends.load(Ordering::Relaxed);
        let (offset, time) = &self.shared.stamps[count as usize % STAMPS];
        offset.store(start, Ordering::Relaxed);
        time.store(now_us, Ordering::Relaxed);
        // Release: a writer that reads this count also sees the stamp.
        self.shared.appends.fetch_add(1, Ordering::Release);
        // SeqCst pairs with the writers' sleep check: either a writer going to sleep sees the
        // new head, or its waker sees that it is asleep.
        self.shared
            .head
            .store(start + frame.len() as u64, Ordering::SeqCst);
        start
    }
}

/// The reading end of the log, shared by the writers and the readers.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    /// The offset just past the last whole frame published.
    pub fn head(&self) -> u64 {
        self.shared.head.load(Ordering::SeqCst)
    }

    pub fn retention(&self) -> u64 {
        self.shared.retention
    }

    /// How many times the room has appended so far (a line, a ping).
    pub fn appends(&self) -> u64 {
        self.shared.appends.load(Ordering::Acquire)
    }

    /// The segments kept now, oldest first: what one writer's pass reads from.
    pub fn snapshot(&self, into: &mut Vec<Arc<Segment>>) {
        into.clear();
        into.extend(self.shared.segments().iter().cloned());
    }

    /// Lets go of segments that no cursor needs any more.
    pub fn trim(&self) {
        self.shared.trim();
    }
}

/// One client's place in the log. It keeps its segment alive, so a client that falls behind
/// can still finish the frame it is in the middle of before it is closed.
pub struct Cursor {
    at: u64,
    segment: Arc<Segment>,
}

/// The client's cursor fell out of the log: it is more than the retention behind.
#[derive(Debug, PartialEq)]
pub struct Lapped;

impl Cursor {
    /// The log offset of the next byte this client gets.
    pub fn at(&self) -> u64 {
        self.at
    }

    /// Adds slices covering the log from the cursor to `to` (at most `head`).
    pub fn gather<'a>(
        &'a self,
        from: u64,
        to: u64,
        snapshot: &'a [Arc<Segment>],
        into: &mut Vec<IoSlice<'a>>,
    ) -> Result<(), Lapped> {
        if from >= to {
            return Ok(());
        }
        let mut at = from;
        if at < self.segment.end() {
            let bytes = self.segment.bytes(at, to);
            at += bytes.len() as u64;
            into.push(IoSlice::new(bytes));
        }
        let later = snapshot.partition_point(|s| s.base() < at);
        for segment in &snapshot[later.saturating_sub(1)..] {
            if at >= to {
                break;
            }
            if segment.base() > at {
                return Err(Lapped); // the bytes in between are gone
            }
            let bytes = segment.bytes(at, to);
            if !bytes.is_empty() {
                at += bytes.len() as u64;
                into.push(IoSlice::new(bytes));
            }
        }
        if at < to {
            return Err(Lapped);
        }
        Ok(())
    }

    /// Moves the cursor `by` bytes on, and on to the next segment when it gets there.
    pub fn advance(&mut self, by: u64, snapshot: &[Arc<Segment>]) {
        self.at += by;
        if self.at >= self.segment.end() {
            if let Some(next) = snapshot.iter().rev().find(|s| s.base() <= self.at) {
                if !Arc::ptr_eq(next, &self.segment) && next.base() >= self.segment.base() {
                    self.segment = next.clone();
                }
            }
        }
    }

    /// How far behind `head` the cursor is, in bytes.
    pub fn behind(&self, head: u64) -> u64 {
        head.saturating_sub(self.at)
    }

    /// Where the frame the cursor is in ends (the cursor itself at a boundary).
    pub fn frame_end(&self) -> u64 {
        self.segment.frame_end(self.at)
    }
}

/// The length of the whole server frame (unmasked) at the start of `bytes`, when its header is
/// there: what a writer needs to finish a frame it stopped in the middle of.
pub fn frame_len(bytes: &[u8]) -> Option<usize> {
    let (header, payload) = match *bytes.get(1)? & 0x7f {
        126 => (
            4,
            u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
        ),
        127 => (10, u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)),
        short => (2, u64::from(short)),
    };
    Some(header + usize::try_from(payload).ok()?)
}

mod history;
mod segment;
mod stamps;
pub use segment::Segment;
use stamps::STAMPS;

#[cfg(test)]
mod tests;
