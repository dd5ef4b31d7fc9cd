//! `--trace`: the protocol made visible on stderr, one line per event.
//!
//! Off by default; every method starts with one well-predicted branch on a `bool`, so the
//! message path pays nothing measurable for it.

use std::net::SocketAddr;

use tungstenite::handshake::server::{Request, Response};

/// Whether to print, copied into every thread that may print.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trace {
    on: bool,
}

impl Trace {
    pub fn new(on: bool) -> Trace {
        Trace { on }
    }

    /// Something the server decided about one client.
    pub fn decision(self, who: &str, what: &str) {
        if self.on {
            eprintln!("{who} | {what}");
        }
    }

    /// Something that happened to a connection that has no nickname yet.
    pub fn note(self, peer: SocketAddr, what: &str) {
        if self.on {
            eprintln!("{peer} | {what}");
        }
    }

    pub fn broadcast(self, recipients: usize, line: &str) {
        if self.on {
            eprintln!(
                "room | broadcast to {recipients} clients: {}",
                escape(line, 60)
            );
        }
    }

    pub fn pinged(self, recipients: usize) {
        if self.on {
            eprintln!("room | pinged {recipients} clients");
        }
    }

    pub fn handshake_request(self, peer: SocketAddr, request: &Request) {
        if !self.on {
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
        ] {
            if let Some(value) = request.headers().get(name) {
                eprintln!(
                    "{peer} | <- {name}: {}",
                    String::from_utf8_lossy(value.as_bytes())
                );
            }
        }
    }

    pub fn handshake_response(self, peer: SocketAddr, request: &Request, response: &Response) {
        if !self.on {
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
    }
}

/// At most `max` bytes of `text`, with control characters escaped, for one trace line.
pub fn escape(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = text[..end].escape_debug().collect();
    if end < text.len() {
        out.push('…');
    }
    out
}
