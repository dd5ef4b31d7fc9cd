//! The wire contract, line by line, against the real binary.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn startup_lines_name_both_real_ports() {
    let server = Server::start(&[]);
    assert_ne!(server.http.port(), 0);
    assert_ne!(server.ws.port(), 0);
    assert!(server
        .startup
        .iter()
        .any(|l| l.contains(&format!("http://{}/", server.http))));
    assert!(server
        .startup
        .iter()
        .any(|l| l.contains(&format!("ws://{}/", server.ws))));
}

#[test]
fn newcomer_first_hears_its_own_join_then_others_hear_it_too() {
    let server = Server::start(&[]);
    let mut a = server.join();
    assert!(a.nickname.starts_with("user-"));
    let n: u32 = a.nickname["user-".len()..].parse().unwrap();
    assert!(n < 100_000);
    let b = server.join();
    assert_eq!(a.line(), format!(" .... {} has joined.", b.nickname));
}

#[test]
fn a_message_reaches_everyone_including_the_sender() {
    let server = Server::start(&[]);
    let mut a = server.join();
    let mut b = Client::connect(&server.ws_url("/chat"));
    a.line(); // b's join
    a.say("hello, room");
    let want = format!("{}: hello, room", a.nickname);
    assert_eq!(a.line(), want);
    assert_eq!(b.line(), want);
}

#[test]
fn text_passes_through_byte_for_byte_even_empty() {
    let server = Server::start(&[]);
    let mut a = server.join();
    for text in [
        "",
        "  spaces  ",
        "ünïcødé ✓ 🦀",
        "<b>not html</b>",
        "tab\tand\nnewline",
    ] {
        a.say(text);
        assert_eq!(a.line(), format!("{}: {}", a.nickname, text));
    }
}

#[test]
fn leaving_is_announced_once_to_those_who_remain() {
    let server = Server::start(&[]);
    let mut a = server.join();
    let mut b = server.join();
    a.line();
    b.ws.close(None).unwrap();
    let left = format!(" .... {} has left.", b.nickname);
    assert_eq!(a.line(), left);
    // Nothing else about b arrives: the next line is the one we send now.
    a.say("after");
    assert_eq!(a.line(), format!("{}: after", a.nickname));
}

#[test]
fn after_a_close_handshake_the_server_closes_the_connection() {
    let server = Server::start(&[]);
    let mut witness = server.join();
    let mut raw = RawClient::connect(server.ws);
    let name = witness.line();
    // A close frame, code 1000: the server answers with its own and then ends the TCP
    // connection (RFC 6455 section 7.1.1), while others keep chatting.
    raw.send_frame(0x88, MASK, &1000u16.to_be_bytes());
    assert_eq!(raw.close_code().0, 1000);
    let replied = Instant::now();
    witness.say("still chatting");
    // The end of the stream, not the test's read timeout: it follows the close reply at
    // once, not when the server's grace for a client that never ends its side (0.5 s) runs
    // out. A quarter of a second for a loaded machine.
    let mut rest = Vec::new();
    let ended = raw.socket.read_to_end(&mut rest);
    let took = replied.elapsed();
    assert!(ended.is_ok(), "the connection stayed open: {ended:?}");
    assert!(
        took < Duration::from_millis(250),
        "the end of the stream came {took:?} after the close reply"
    );
    let name = name
        .strip_prefix(" .... ")
        .and_then(|r| r.strip_suffix(" has joined."))
        .unwrap();
    // The leave and the witness's own line race to the room: either order, each once.
    let mut heard = [witness.line(), witness.line()];
    heard.sort();
    let mut want = [
        format!(" .... {name} has left."),
        format!("{}: still chatting", witness.nickname),
    ];
    want.sort();
    assert_eq!(heard, want);
}

#[test]
fn a_dropped_connection_without_close_is_announced_as_left() {
    let server = Server::start(&[]);
    let mut a = server.join();
    let b = server.join();
    a.line();
    let name = b.nickname.clone();
    drop(b); // TCP closes with no close frame
    assert_eq!(a.line(), format!(" .... {name} has left."));
}

#[test]
fn a_connection_reset_is_announced_as_left_once() {
    let server = Server::start(&[]);
    let mut a = server.join();
    let b = server.join();
    a.line();
    let name = b.nickname.clone();
    let tungstenite::stream::MaybeTlsStream::Plain(socket) = b.ws.get_ref() else {
        unreachable!("a ws:// client")
    };
    reset_on_close(socket);
    drop(b);
    assert_eq!(a.line(), format!(" .... {name} has left."));
    a.say("after");
    assert_eq!(a.line(), format!("{}: after", a.nickname));
}

#[test]
fn fifty_clients_twenty_messages_each_all_see_one_order() {
    const CLIENTS: usize = 50;
    const MESSAGES: usize = 20;
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| server.join()).collect();
    // Everyone has seen everyone's join before anyone speaks.
    settle(&mut clients);
    let names: HashSet<String> = clients.iter().map(|c| c.nickname.clone()).collect();
    assert_eq!(names.len(), CLIENTS, "nicknames must be unique");

    let start = Arc::new(Barrier::new(CLIENTS));
    let transcripts: Vec<Vec<String>> = clients
        .into_iter()
        .map(|mut client| {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                for i in 0..MESSAGES {
                    client.say(&format!("message {i}"));
                }
                (0..CLIENTS * MESSAGES)
                    .map(|_| client.line())
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();

    for transcript in &transcripts {
        assert_eq!(
            transcript, &transcripts[0],
            "two clients saw different orders"
        );
    }
    for name in &names {
        let theirs: Vec<&String> = transcripts[0]
            .iter()
            .filter(|l| l.starts_with(&format!("{name}: ")))
            .collect();
        let expected: Vec<String> = (0..MESSAGES)
            .map(|i| format!("{name}: message {i}"))
            .collect();
        assert_eq!(
            theirs,
            expected.iter().collect::<Vec<_>>(),
            "{name}'s lines out of order"
        );
    }
}

#[test]
fn nicknames_stay_unique_across_many_joins() {
    let server = Server::start(&[]);
    let clients: Vec<Client> = (0..300).map(|_| server.join()).collect();
    let names: HashSet<&str> = clients.iter().map(|c| c.nickname.as_str()).collect();
    assert_eq!(names.len(), clients.len());
}

#[test]
fn joins_and_leaves_are_logged_with_nickname_and_address() {
    let server = Server::start(&[]);
    let a = server.join();
    let name = a.nickname.clone();
    drop(a);
    eventually("leave logged", || {
        server
            .stderr()
            .contains(&format!("leave {name} from 127.0.0.1:"))
    });
    assert!(server
        .stderr()
        .contains(&format!("join  {name} from 127.0.0.1:")));
}

#[test]
fn the_page_is_html_and_points_at_the_real_websocket_port() {
    let server = Server::start(&[]);
    let (status, head, body) = get(server.http, "/");
    assert_eq!(status, 200);
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/html"));
    assert!(body.contains("<title>threadchat</title>"));
    assert!(body.contains("textContent"), "lines must be shown as text");
    let (status, head, body) = get(server.http, "/config.js");
    assert_eq!(status, 200);
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/javascript"));
    assert!(body.contains(&format!("wsPort: {}", server.ws.port())));
}

#[test]
fn the_www_folder_is_served_with_404s_and_no_way_out() {
    let www = concat!(env!("CARGO_MANIFEST_DIR"), "/www");
    let server = Server::start(&["--www", www]);
    assert_eq!(get(server.http, "/index.html").0, 200);
    assert_eq!(get(server.http, "/missing.css").0, 404);
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E%2FCargo.toml",
        "/..%2f..%2fetc/passwd",
    ] {
        let (status, _, body) = get(server.http, path);
        assert!(status == 404 || status == 400, "{path} gave {status}");
        assert!(!body.contains("[package]"), "{path} leaked Cargo.toml");
    }
}

#[test]
fn help_lists_every_flag() {
    let out = run_to_exit(&["--help"], PATIENCE);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--bind",
        "--http-port",
        "--ws-port",
        "--www",
        "--max-message-bytes",
        "--max-clients",
        "--max-clients-per-address",
        "--max-page-connections",
        "--handshake-timeout",
        "--trust-proxy",
        "--trace",
    ] {
        assert!(text.contains(flag), "--help does not mention {flag}");
    }
    let bad = run_to_exit(&["--ws-port", "nope"], PATIENCE);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--ws-port"));
}

#[test]
fn a_line_sent_the_moment_the_upgrade_is_answered_is_delivered() {
    let server = Server::start(&[]);
    for i in 0..30 {
        let said = say_at_once(&server.ws_url("/"), &format!("at once {i}"));
        assert!(said.is_ok(), "line {i}: {said:?}");
    }
}

#[test]
fn a_line_sent_in_the_same_write_as_the_upgrade_request_is_refused_with_400() {
    // RFC 6455 4.1: a client waits for the server's answer before it sends a frame. One
    // that does not is told so, never left wondering where its line went.
    let server = Server::start(&[]);
    for i in 0..30 {
        let mut socket = std::net::TcpStream::connect(server.ws).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut request = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.ws
        )
        .into_bytes();
        let mask = [1u8, 2, 3, 4];
        request.extend([0x81, 0x80 | 2]);
        request.extend(mask);
        request.extend(b"hi".iter().zip(mask).map(|(b, m)| b ^ m));
        socket.write_all(&request).unwrap();
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "try {i}: {answer:?}");
    }
    // And the server goes on.
    server.join();
}
