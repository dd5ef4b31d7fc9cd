//! A client of the resume dialect, as a page keeps it, and a way to drop its connection the
//! way a network does.

use std::net::TcpStream;

use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::{handshake, read_text, Server};

pub type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

pub const SUBPROTOCOL: (&str, &str) = ("Sec-WebSocket-Protocol", "threadchat-resume");

/// A client of the resume dialect, as its page keeps it: its token, its name, and the
/// position of the last line it got.
pub struct Resumable {
    pub ws: Socket,
    pub token: String,
    pub nickname: String,
    pub position: String,
}

impl Resumable {
    /// A new session: `new`, then its token, then its own join line with its position.
    pub fn new_session(server: &Server) -> Resumable {
        let mut ws = handshake(&server.ws_url("/"), &[SUBPROTOCOL]).expect("handshake");
        ws.send(Message::text("new")).unwrap();
        let session = read_text(&mut ws);
        let token = session
            .strip_prefix("session ")
            .unwrap_or_else(|| panic!("expected the session's token, got {session:?}"))
            .to_owned();
        let mut client = Resumable {
            ws,
            token,
            nickname: String::new(),
            position: String::new(),
        };
        let join = client.line();
        client.nickname = join
            .strip_prefix(" .... ")
            .and_then(|r| r.strip_suffix(" has joined."))
            .unwrap_or_else(|| panic!("expected its join, got {join:?}"))
            .to_owned();
        client
    }

    /// The next line of the room, without its position, which it keeps.
    pub fn line(&mut self) -> String {
        let text = read_text(&mut self.ws);
        let (position, line) = text
            .split_once(' ')
            .unwrap_or_else(|| panic!("no position in {text:?}"));
        assert!(
            position.chars().all(|c| c.is_ascii_digit() || c == '-'),
            "{text:?}"
        );
        self.position = position.to_owned();
        line.to_owned()
    }

    /// The connection drops with no close frame (a reset: SO_LINGER 0).
    pub fn cut(self) -> (String, String, String) {
        if let MaybeTlsStream::Plain(socket) = self.ws.get_ref() {
            reset(socket);
        }
        (self.token, self.nickname, self.position)
    }

    /// Comes back on a new connection with `token` and the last position it got. Returns the
    /// connection and the server's first word on it.
    pub fn back(server: &Server, token: &str, position: &str) -> (Socket, String) {
        let mut ws = handshake(&server.ws_url("/"), &[SUBPROTOCOL]).expect("handshake");
        ws.send(Message::text(format!("resume {token} {position}")))
            .unwrap();
        let first = read_text(&mut ws);
        (ws, first)
    }
}

/// Closes a socket with a reset, as a lost network or a killed process would: no close
/// frame.
pub fn reset(socket: &TcpStream) {
    super::reset_on_close(socket);
    let _ = socket.shutdown(std::net::Shutdown::Both);
}
