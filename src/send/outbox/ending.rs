//! How a connection's phase ends, off the path a line takes: the writer evicts the client or
//! is done with its socket, and the reader says it has stopped reading, so that the writer
//! knows no drain waits on the socket any more.

use super::*;

impl Outbox {
    /// The writer gives up on the client: nothing more is queued, and what was queued and not
    /// yet taken is dropped. Returns whether this call ended the open phase.
    pub(crate) fn evict(&self) -> bool {
        let mut state = self.lock();
        if state.phase != Phase::Open {
            return false;
        }
        state.phase = Phase::Evicted;
        state.frames.clear();
        true
    }

    /// The writer is done with the socket. Returns whether the connection was still open.
    pub(crate) fn done(&self) -> bool {
        let mut state = self.lock();
        let was_open = state.phase == Phase::Open;
        state.phase = Phase::Done;
        state.frames.clear();
        was_open
    }

    /// The reader thread has ended.
    pub fn reader_done(&self) {
        self.lock().reader_done = true;
    }

    pub(crate) fn is_reader_done(&self) -> bool {
        self.lock().reader_done
    }
}
