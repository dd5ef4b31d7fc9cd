//! Resumable sessions: a client that asks for the `threadchat-resume` subprotocol and drops
//! without a close comes back as itself, with every line it missed, and nobody else notices.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

const SUBPROTOCOL: (&str, &str) = ("Sec-WebSocket-Protocol", "threadchat-resume");

/// A client of the resume dialect, as its page keeps it: its token, its name, and the
/// position of the last line it got.
struct Resumable {
    ws: Socket,
    token: String,
    nickname: String,
    position: String,
}

impl Resumable {
    /// A new session: `new`, then its token, then its own join line with its position.
    fn new_session(server: &Server) -> Resumable {
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
    fn line(&mut self) -> String {
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
    fn cut(self) -> (String, String, String) {
        if let MaybeTlsStream::Plain(socket) = self.ws.get_ref() {
            reset(socket);
        }
        (self.token, self.nickname, self.position)
    }

    /// Comes back on a new connection with `token` and the last position it got. Returns the
    /// connection and the server's first word on it.
    fn back(server: &Server, token: &str, position: &str) -> (Socket, String) {
        let mut ws = handshake(&server.ws_url("/"), &[SUBPROTOCOL]).expect("handshake");
        ws.send(Message::text(format!("resume {token} {position}")))
            .unwrap();
        let first = read_text(&mut ws);
        (ws, first)
    }
}

/// Closes a socket with a reset, as a lost network or a killed process would: no close
/// frame, no FIN.
fn reset(socket: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a live local of the type the option expects, on our own socket.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = socket.shutdown(std::net::Shutdown::Both);
}

/// Reads `client` until its own `marker` line, returning what came before it.
fn until_marker(client: &mut Client, marker: &str) -> Vec<String> {
    let want = format!("{}: {marker}", client.nickname);
    client.say(marker);
    client.until(&want)
}

#[test]
fn a_dropped_client_comes_back_as_itself_with_every_line_it_missed() {
    let server = Server::start(&["--rate-limit", "0"]);
    let mut witness = server.join();
    let mut page = Resumable::new_session(&server);
    assert_eq!(
        witness.line(),
        format!(" .... {} has joined.", page.nickname)
    );
    witness.say("before");
    let before = format!("{}: before", witness.nickname);
    assert_eq!(witness.line(), before);
    assert_eq!(page.line(), before);
    let (token, nickname, position) = page.cut();

    // Lines go by while it is away.
    let missed: Vec<String> = (0..3).map(|i| format!("missed {i}")).collect();
    for line in &missed {
        witness.say(line);
    }
    let (mut ws, first) = Resumable::back(&server, &token, &position);
    assert_eq!(first, "resumed 3");
    let mut back = Resumable {
        ws,
        token,
        nickname,
        position,
    };
    for line in &missed {
        assert_eq!(back.line(), format!("{}: {line}", witness.nickname));
    }
    // Then live lines, and it speaks under its old name.
    back.ws.send(Message::text("I am back")).unwrap();
    let from_it = format!("{}: I am back", back.nickname);
    assert_eq!(back.line(), from_it);
    // The others saw no leave and no join: only the lines.
    let heard = witness.until(&from_it);
    let expected: Vec<String> = missed
        .iter()
        .map(|l| format!("{}: {l}", witness.nickname))
        .collect();
    assert_eq!(heard, expected, "the witness heard something else");
    ws = back.ws;
    drop(ws);
}

#[test]
fn after_the_window_it_is_announced_once_and_comes_back_as_a_newcomer_with_a_mark() {
    let server = Server::start(&["--resume-window", "1"]);
    let mut witness = server.join();
    let page = Resumable::new_session(&server);
    witness.line();
    let (token, nickname, position) = page.cut();
    let dropped = Instant::now();
    assert_eq!(witness.line(), format!(" .... {nickname} has left."));
    let waited = dropped.elapsed();
    // The window (1 s), then the next check (every second): 2 s, and one more for a loaded
    // machine.
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "announced after {waited:?}"
    );
    let (mut ws, first) = Resumable::back(&server, &token, &position);
    assert_eq!(first, "missed", "a visible mark that lines may have been missed");
    let session = read_text(&mut ws);
    assert!(session.starts_with("session "), "{session:?}");
    assert_ne!(&session["session ".len()..], token, "a fresh session");
    let join = read_text(&mut ws);
    let newcomer = join
        .split_once(' ')
        .map(|(_, line)| line.to_owned())
        .unwrap_or_default();
    assert!(newcomer.ends_with(" has joined."), "{join:?}");
    assert_eq!(witness.line(), newcomer);
    // Announced once: the next line the witness hears is its own.
    assert!(until_marker(&mut witness, "once").is_empty());
}

#[test]
fn a_clean_close_is_announced_at_once() {
    let server = Server::start(&[]);
    let mut witness = server.join();
    let mut page = Resumable::new_session(&server);
    witness.line();
    page.ws.close(None).unwrap();
    while page.ws.read().is_ok() {}
    assert_eq!(
        witness.line(),
        format!(" .... {} has left.", page.nickname)
    );
}

#[test]
fn a_second_connection_with_the_token_takes_over_and_the_first_is_closed() {
    let server = Server::start(&[]);
    let mut witness = server.join();
    let mut first = Resumable::new_session(&server);
    witness.line();
    let (token, position) = (first.token.clone(), first.position.clone());
    let (mut second, greeting) = Resumable::back(&server, &token, &position);
    assert_eq!(greeting, "resumed 0");
    let (code, reason) = expect_close(&mut first.ws);
    assert_eq!(
        (code, reason.as_str()),
        (1008, "resumed on another connection")
    );
    second.send(Message::text("taken over")).unwrap();
    let line = format!("{}: taken over", first.nickname);
    assert_eq!(witness.until(&line), Vec::<String>::new(), "no leave, no join");
}

#[test]
fn an_unknown_token_gets_a_fresh_session_and_the_mark() {
    let server = Server::start(&[]);
    let (mut ws, first) = Resumable::back(&server, &"0".repeat(32), "17");
    assert_eq!(first, "missed");
    assert!(read_text(&mut ws).starts_with("session "));
    assert!(read_text(&mut ws).ends_with(" has joined."));
}

#[test]
fn a_first_message_that_is_neither_new_nor_resume_is_closed_with_1008() {
    let server = Server::start(&[]);
    let mut ws = handshake(&server.ws_url("/"), &[SUBPROTOCOL]).expect("handshake");
    ws.send(Message::text("hello")).unwrap();
    let (code, reason) = expect_close(&mut ws);
    assert_eq!(code, 1008);
    assert!(reason.contains("new"), "{reason:?}");
}

#[test]
fn tokens_never_reach_the_logs_or_the_trace() {
    let server = Server::start(&["--trace"]);
    let page = Resumable::new_session(&server);
    let (token, _, position) = page.cut();
    let (mut back, greeting) = Resumable::back(&server, &token, &position);
    assert_eq!(greeting, "resumed 0");
    back.send(Message::text("after")).unwrap();
    read_text(&mut back);
    eventually("the session's frames in the trace", || {
        let trace = server.stderr();
        trace.contains("session <token>") && trace.contains("resumed its session")
    });
    assert!(!server.stderr().contains(&token), "the token was printed");
}
