//! Server-to-client frames, built by hand so each is encoded exactly once.
//!
//! A server frame is never masked (RFC 6455 section 5.1), so the bytes of one broadcast
//! are the same for every client: the room builds them here once and appends them to the log
//! that every writer reads.

use std::sync::Arc;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The encoded bytes of one or more whole frames: a line on its way to the log, or a frame for
/// one client alone in its outbox.
pub type Frame = Arc<[u8]>;

/// The WebSocket subprotocol a client asks for to get a resumable session: every line then
/// comes with its position, and a dropped connection can come back as itself.
pub const RESUME_SUBPROTOCOL: &str = "threadchat-resume";

/// What everyone hears when a client joins or leaves: these, around its nickname.
pub const JOINED: (&str, &str) = (" .... ", " has joined.");
pub const LEFT: (&str, &str) = (" .... ", " has left.");

/// A join or leave line: `(before, after)` around the nickname.
pub fn around((before, after): (&str, &str), nickname: &str) -> String {
    format!("{before}{nickname}{after}")
}

/// Nicknames are `user-N` with N drawn from `0..NICKNAME_SPACE`, as in the cookbook.
pub const NICKNAME_SPACE: u32 = 100_000;

/// How a client's lines look on the wire. Each dialect has its own log, so that a line is
/// still framed once per dialect, not once per client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// The cookbook's contract: each line as it is.
    Plain = 0,
    /// `threadchat-resume`: each line after its position and a space; lines for this client
    /// alone after `- `; and a few words of the session's own (`session`, `resumed`,
    /// `missed`).
    Resume = 1,
}

/// Close codes the server sends (RFC 6455 section 7.4.1).
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_UNSUPPORTED: u16 = 1003;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// A final, unmasked text frame carrying `line`.
pub fn text_frame(line: &str) -> Frame {
    frame(OpCode::Data(Data::Text), line.as_bytes())
}

/// A line for one client alone (a notice): in the resume dialect after `- `, so that it is
/// never taken for a line of the room, which has a position.
pub fn notice(dialect: Dialect, text: &str) -> Frame {
    match dialect {
        Dialect::Plain => text_frame(text),
        Dialect::Resume => text_frame(&format!("- {text}")),
    }
}

/// A close frame: the code in network byte order, then the reason.
pub fn close_frame(code: u16, reason: &str) -> Frame {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    frame(OpCode::Control(Control::Close), &payload)
}

/// Whether `frame` is a close frame (its opcode, in the low bits of the first byte).
pub fn is_close(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x0f == 0x8)
}

/// An empty ping; the client's pong proves it is still there.
pub fn ping_frame() -> Frame {
    frame(OpCode::Control(Control::Ping), b"")
}

fn frame(opcode: OpCode, payload: &[u8]) -> Frame {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    let mut bytes = Vec::with_capacity(header.len(len) + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(len, &mut bytes);
    bytes.extend_from_slice(payload);
    bytes.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_uses_the_seven_bit_length() {
        assert_eq!(&*text_frame("hi"), &[0x81, 2, b'h', b'i']);
    }

    #[test]
    fn longer_text_uses_the_sixteen_bit_length() {
        let line = "x".repeat(200);
        let bytes = text_frame(&line);
        assert_eq!(&bytes[..4], &[0x81, 126, 0, 200]);
        assert_eq!(bytes.len(), 4 + 200);
    }

    #[test]
    fn close_frame_carries_code_then_reason() {
        assert_eq!(&close_frame(1008, "too slow")[..4], &[0x88, 10, 0x03, 0xF0]);
    }
}
