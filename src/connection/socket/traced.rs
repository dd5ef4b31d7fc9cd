//! What `--trace` shows of a client's stream, off the path a message takes: each frame read,
//! decoded, and a read the process's stop interrupted.

use super::*;

impl ClientStream {
    /// Out of line, and only with `--trace`: the formatting would otherwise deepen every read's
    /// stack frame, and each idle reader keeps the pages its reads touch.
    #[cold]
    #[inline(never)]
    pub(super) fn trace_interrupted(&self) {
        if let (true, Some((outbox, _))) = (self.trace.is_on(), &self.outbox) {
            let why = "read interrupted (the process was stopped); reading on";
            self.trace.decision(outbox.label(), why);
        }
    }

    /// With `--trace`: decodes what was read, frame by frame.
    #[inline]
    pub(super) fn trace_read(&mut self, bytes: &[u8]) {
        if let (Some(frames), Some((outbox, _))) = (&mut self.frames_in, &self.outbox) {
            frames.feed(bytes, &outbox.label());
        }
    }
}
