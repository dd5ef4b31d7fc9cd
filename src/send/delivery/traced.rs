//! What `--trace` shows of a send, off the path a line takes: the bytes one `sendmsg`
//! carried, decoded frame by frame, and how many went.

use super::*;

/// With `--trace`: decodes the `sent` bytes of `slices` for `outbox`'s client, frame by frame,
/// and notes the send.
pub(super) fn trace_sent(
    frames_out: &mut Option<FrameTrace>,
    outbox: &Outbox,
    slices: &[IoSlice<'_>],
    sent: usize,
    trace: Trace,
) {
    if let Some(frames) = frames_out {
        let who = outbox.label();
        for (slice, n) in slices
            .iter()
            .zip(shares(sent, slices.iter().map(|s| s.len())))
        {
            frames.feed(&slice[..n], &who);
        }
        trace.decision(&who, &format!("wrote {sent} bytes in 1 system call(s)"));
    }
}
