//! `--trace` shows the protocol: the handshake, every frame both ways, and decisions.

mod common;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

/// Lines of the server's stderr that mention `who` and contain every one of `parts`.
fn trace_has(server: &Server, who: &str, parts: &[&str]) -> bool {
    server.stderr().lines().any(|line| {
        line.starts_with(&format!("{who} | ")) && parts.iter().all(|p| line.contains(p))
    })
}

fn wait_trace(server: &Server, who: &str, parts: &[&str]) {
    eventually(&format!("a trace line for {who} with {parts:?}"), || {
        trace_has(server, who, parts)
    });
}

#[test]
fn trace_shows_masks_length_forms_pongs_and_closes() {
    let server = Server::start(&["--trace"]);
    let mut client = server.join();
    let me = client.nickname.clone();

    client.say("hello");
    client.line();
    // Client frames are masked with a key; server frames are not.
    wait_trace(
        &server,
        &me,
        &["<- FIN=1 text MASK=1 key=", "len=5 (7-bit) \"hello\""],
    );
    wait_trace(
        &server,
        &me,
        &["-> FIN=1 text MASK=0 len=", &format!("\"{me}: hello\"")],
    );

    // 200 bytes need the 16-bit length form.
    client.say(&"y".repeat(200));
    client.line();
    wait_trace(&server, &me, &["<- FIN=1 text MASK=1", "len=200 (16-bit)"]);

    // A ping is answered with a pong carrying the same payload.
    client
        .ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    loop {
        if let Message::Pong(payload) = client.ws.read().unwrap() {
            assert_eq!(&payload[..], b"are you there");
            break;
        }
    }
    wait_trace(&server, &me, &["<- FIN=1 ping MASK=1", "\"are you there\""]);
    wait_trace(&server, &me, &["-> FIN=1 pong MASK=0", "\"are you there\""]);

    // A close shows its code and reason both ways.
    client
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye now".into(),
        }))
        .unwrap();
    while client.ws.read().is_ok() {}
    wait_trace(
        &server,
        &me,
        &["<- FIN=1 close MASK=1", "code=1000 reason=\"bye now\""],
    );
    wait_trace(
        &server,
        &me,
        &["-> FIN=1 close MASK=0", "code=1000 reason=\"bye now\""],
    );
}

#[test]
fn trace_shows_the_handshake_and_the_accept_key_derivation() {
    let server = Server::start(&["--trace"]);
    // The key from RFC 6455 section 1.3, whose accept value the RFC gives.
    let mut raw = RawClient::connect(server.ws);
    raw.send_frame(0x81, MASK, b"hi");
    let stderr = || server.stderr();
    eventually("the handshake in the trace", || {
        stderr().contains("<- GET / HTTP/1.1")
            && stderr().contains("<- Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
            && stderr().contains("= s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            && stderr().contains("-> HTTP/1.1 101 Switching Protocols")
    });
    eventually("decisions in the trace", || {
        stderr().contains("room | broadcast to 1 clients: ")
            && stderr().contains("| joined the room")
    });
}

#[test]
fn without_trace_there_are_no_frame_lines() {
    let server = Server::start(&[]);
    let mut client = server.join();
    client.say("quiet");
    client.line();
    drop(client);
    eventually("the leave log line", || {
        server.stderr().contains("leave user-")
    });
    assert!(
        !server.stderr().contains("MASK="),
        "frames traced without --trace"
    );
}

#[test]
fn trace_says_which_http_error_a_refused_upgrade_got() {
    let server = Server::start(&["--trace", "--allow-origin", "http://friend.example"]);
    let refused = handshake(&server.ws_url("/"), &[("Origin", "http://evil.example")]);
    assert!(
        matches!(&refused, Err(tungstenite::Error::Http(r)) if r.status() == 403),
        "{refused:?}"
    );
    // The decision names the answer the client got, not a failed handshake.
    eventually("the refusal in the trace", || {
        server.stderr().contains("| answered HTTP 403")
    });
    assert!(
        !server.stderr().contains("handshake failed"),
        "{}",
        server.stderr()
    );
}
