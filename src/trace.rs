//! `--trace`: the protocol made visible on stderr, one line per event.
//!
//! Off by default; every method starts with one well-predicted branch on a `bool`, so the
//! message path pays nothing measurable for it. `make bench` checks that claim against a
//! build without the `trace` feature, where `is_on` is the constant `false` and the
//! compiler removes every trace line.

use std::io::Cursor;

use tungstenite::handshake::server::{Request, Response};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// How much of a payload a trace line shows.
const PREVIEW_BYTES: usize = 60;

/// Whether to print, copied into every thread that may print.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trace {
    on: bool,
}

impl Trace {
    pub fn new(on: bool) -> Trace {
        Trace { on }
    }

    /// False for ever in a build without the `trace` feature.
    pub fn is_on(self) -> bool {
        cfg!(feature = "trace") && self.on
    }

    /// A frame decoder for one direction of one connection, or `None` when tracing is
    /// off, so that untraced connections carry nothing extra.
    pub fn frames(self, direction: Direction) -> Option<FrameTrace> {
        self.is_on().then(|| FrameTrace {
            direction,
            buffer: Vec::new(),
            current: None,
        })
    }

    /// Something the server did or decided about one client, labelled with its nickname,
    /// or with its address while it has none.
    pub fn decision(self, who: impl std::fmt::Display, what: &str) {
        if self.is_on() {
            eprintln!("{who} | {what}");
        }
    }

    pub fn broadcast(self, recipients: usize, line: &str) {
        if self.is_on() {
            eprintln!(
                "room | broadcast to {recipients} clients: {}",
                escape(line, 60)
            );
        }
    }

    pub fn pinged(self, recipients: usize) {
        if self.is_on() {
            eprintln!("room | pinged {recipients} clients");
        }
    }

    pub fn handshake_request(self, peer: &str, request: &Request) {
        if !self.is_on() {
            return;
        }
        eprintln!(
            "{peer} | <- {} {} {:?}",
            request.method(),
            request.uri(),
            request.version()
        );
        for name in [
            "Host",
            "Origin",
            "Upgrade",
            "Connection",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Protocol",
        ] {
            if let Some(value) = request.headers().get(name) {
                eprintln!(
                    "{peer} | <- {name}: {}",
                    String::from_utf8_lossy(value.as_bytes())
                );
            }
        }
    }

    pub fn handshake_response(self, peer: &str, request: &Request, response: &Response) {
        if !self.is_on() {
            return;
        }
        let key = request
            .headers()
            .get("Sec-WebSocket-Key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let accept = response
            .headers()
            .get("Sec-WebSocket-Accept")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        eprintln!(
            "{peer} | Sec-WebSocket-Accept = base64(SHA-1({key:?} + \"258EAFA5-E914-47DA-95CA-C5AB0DC85B11\")) = {accept}"
        );
        eprintln!("{peer} | -> {:?} {}", response.version(), response.status());
        if let Some(chosen) = response.headers().get("Sec-WebSocket-Protocol") {
            eprintln!(
                "{peer} | -> Sec-WebSocket-Protocol: {}",
                String::from_utf8_lossy(chosen.as_bytes())
            );
        }
    }
}

/// At most `max` bytes of `text`, with control characters escaped, for one trace line.
pub fn escape(text: &str, max: usize) -> String {
    let end = text.floor_char_boundary(max);
    let mut out: String = text[..end].escape_debug().collect();
    if end < text.len() {
        out.push('…');
    }
    out
}

/// Which way frames go, as trace lines show it.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// From the client to the server: always masked.
    In,
    /// From the server to the client: never masked.
    Out,
}

/// Turns the bytes of one direction of a connection back into frames and prints one line
/// per frame. Bytes may arrive in any pieces; only a payload's first bytes are kept.
pub struct FrameTrace {
    direction: Direction,
    buffer: Vec<u8>,
    current: Option<Partial>,
}

/// A frame whose header has been read and whose payload is still arriving.
struct Partial {
    header: FrameHeader,
    len: u64,
    /// 7, 16 or 64: how the length was written on the wire.
    length_bits: u8,
    remaining: u64,
    preview: Vec<u8>,
}

impl FrameTrace {
    /// Takes the next bytes of the stream; prints a line, labelled `who`, for each frame
    /// they complete.
    pub fn feed(&mut self, bytes: &[u8], who: &str) {
        self.buffer.extend_from_slice(bytes);
        loop {
            if self.current.is_none() {
                let mut cursor = Cursor::new(&self.buffer);
                match FrameHeader::parse(&mut cursor) {
                    Ok(Some((header, len))) => {
                        let used = cursor.position() as usize;
                        let length_bits = match used - if header.mask.is_some() { 4 } else { 0 } {
                            2 => 7,
                            4 => 16,
                            _ => 64,
                        };
                        self.buffer.drain(..used);
                        self.current = Some(Partial {
                            header,
                            len,
                            length_bits,
                            remaining: len,
                            preview: Vec::new(),
                        });
                    }
                    Ok(None) => return,
                    Err(err) => {
                        self.print(who, &format!("unreadable frame header: {err}"));
                        self.buffer.clear();
                        return;
                    }
                }
            }
            let Some(partial) = self.current.as_mut() else {
                return;
            };
            let take = self
                .buffer
                .len()
                .min(usize::try_from(partial.remaining).unwrap_or(usize::MAX));
            let keep = take.min(125usize.saturating_sub(partial.preview.len()));
            partial.preview.extend_from_slice(&self.buffer[..keep]);
            self.buffer.drain(..take);
            partial.remaining -= take as u64;
            if partial.remaining > 0 {
                return;
            }
            if let Some(done) = self.current.take() {
                let line = describe(&done);
                self.print(who, &line);
            }
        }
    }

    fn print(&self, who: &str, what: &str) {
        let arrow = match self.direction {
            Direction::In => "<-",
            Direction::Out => "->",
        };
        eprintln!("{who} | {arrow} {what}");
    }
}

/// A session token is a secret: the resume dialect's `session <token>` and `resume <token>
/// <position>` are shown with the token left out.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    for word in ["session ", "resume "] {
        if let Some(rest) = text.strip_prefix(word) {
            let after = rest.find(' ').map_or("", |i| &rest[i..]);
            return format!("{word}<token>{after}").into();
        }
    }
    text.into()
}

/// One line for one frame: the header bit by bit, then what the payload says.
fn describe(frame: &Partial) -> String {
    let header = &frame.header;
    let mut payload = frame.preview.clone();
    let mask = match header.mask {
        Some(key) => {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
            format!(
                "MASK=1 key={:02x}{:02x}{:02x}{:02x}",
                key[0], key[1], key[2], key[3]
            )
        }
        None => "MASK=0".to_owned(),
    };
    let opcode = match header.opcode {
        OpCode::Data(Data::Continue) => "continuation".to_owned(),
        OpCode::Data(Data::Text) => "text".to_owned(),
        OpCode::Data(Data::Binary) => "binary".to_owned(),
        OpCode::Data(Data::Reserved(n)) | OpCode::Control(Control::Reserved(n)) => {
            format!("reserved({n:#x})")
        }
        OpCode::Control(Control::Close) => "close".to_owned(),
        OpCode::Control(Control::Ping) => "ping".to_owned(),
        OpCode::Control(Control::Pong) => "pong".to_owned(),
    };
    let rsv = if header.rsv1 || header.rsv2 || header.rsv3 {
        format!(
            " RSV={}{}{}",
            header.rsv1 as u8, header.rsv2 as u8, header.rsv3 as u8
        )
    } else {
        String::new()
    };
    let body = match header.opcode {
        OpCode::Control(Control::Close) if payload.len() >= 2 => format!(
            "code={} reason={:?}",
            u16::from_be_bytes([payload[0], payload[1]]),
            String::from_utf8_lossy(&payload[2..])
        ),
        _ => format!(
            "\"{}\"",
            escape(&redact(&String::from_utf8_lossy(&payload)), PREVIEW_BYTES)
        ),
    };
    format!(
        "FIN={} {opcode}{rsv} {mask} len={} ({}-bit) {body}",
        header.is_final as u8, frame.len, frame.length_bits
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_reach_the_trace() {
        let token = "0123456789abcdef0123456789abcdef";
        assert_eq!(redact(&format!("session {token}")), "session <token>");
        assert_eq!(redact(&format!("resume {token} 17")), "resume <token> 17");
        assert_eq!(
            redact("user-1: resume is a word"),
            "user-1: resume is a word"
        );
    }
}
