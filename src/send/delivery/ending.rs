//! How one client's delivery is cut short, off the path a line takes: an eviction or a write
//! timeout drops what the client has not started and ends its share of the log after the
//! frame it is in, with a close frame after that.

use super::*;

/// Why a client whose socket took nothing for the write timeout is closed.
const NOT_READING: &str = "not reading";

impl Delivery {
    /// Gives up on the client: what it has not started is dropped, and close 1008 follows the
    /// frame it is in. Returns false if the connection was no longer open, and so not evicted.
    pub fn evict(&mut self) -> bool {
        if !self.outbox.evict() {
            return false;
        }
        let too_slow = wire::close_frame(wire::CLOSE_POLICY, "too slow");
        self.end_after_current_frame(Some(too_slow));
        true
    }

    /// The socket has taken nothing for the write timeout: what the client has not started is
    /// dropped, and after the frame it is in comes only a close frame, the one already queued
    /// (a reply, "flooding"...) if there is one, else 1008 "not reading". Returns whether the
    /// connection was still open until now.
    pub fn time_out(&mut self) -> bool {
        // Bounded: frames wait in the outbox only up to its limit, and the close after them.
        self.collect();
        let was_open = self.outbox.evict();
        let mid_private = self.private_sent > 0;
        let closing = mid_private && self.private.front().is_some_and(|(_, f)| wire::is_close(f));
        let queued_close = self
            .private
            .iter()
            .skip(usize::from(mid_private))
            .rev()
            .find(|(_, frame)| wire::is_close(frame))
            .map(|(_, frame)| frame.clone());
        let close =
            queued_close.unwrap_or_else(|| wire::close_frame(wire::CLOSE_POLICY, NOT_READING));
        self.end_after_current_frame((!closing).then_some(close));
        was_open
    }

    /// Drops what the client has not started, and ends its share of the log after the frame
    /// it is in (a private one or a line), with `close` after that.
    fn end_after_current_frame(&mut self, close: Option<Frame>) {
        let mid_private = self.private_sent > 0;
        self.private.truncate(usize::from(mid_private));
        let limit = if mid_private {
            self.cursor.at()
        } else {
            self.cursor.frame_end()
        };
        self.limit = Some(limit);
        if let Some(close) = close {
            self.private.push_back((limit, close));
        }
    }

    /// Bytes still to send up to the limit, private frames included; for an open connection,
    /// up to `head`.
    pub fn left(&self, head: u64) -> usize {
        let to = self.limit.map_or(head, |limit| head.min(limit));
        let log = usize::try_from(to.saturating_sub(self.cursor.at())).unwrap_or(usize::MAX);
        let private: usize = self.private.iter().map(|(_, frame)| frame.len()).sum();
        log.saturating_add(private.saturating_sub(self.private_sent))
    }
}
