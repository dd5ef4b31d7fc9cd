//! Hostile and broken clients: each gets the answer the README promises, and a witness
//! connected throughout sees the offender come and go and nothing else go missing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use tungstenite::Message;

/// A witness that has seen the offender join: returns the offender's nickname.
fn offender_joined(witness: &mut Client) -> String {
    let line = witness.line();
    line.strip_prefix(" .... ")
        .and_then(|r| r.strip_suffix(" has joined."))
        .unwrap_or_else(|| panic!("expected a join, got {line:?}"))
        .to_owned()
}

/// The witness's next line is the offender's leave, and the room still works after it.
fn offender_left_and_room_works(witness: &mut Client, offender: &str) {
    assert_eq!(witness.line(), format!(" .... {offender} has left."));
    witness.say("still here");
    assert_eq!(witness.line(), format!("{}: still here", witness.nickname));
}

/// Runs `misbehave` on a raw connection and checks the close code it gets.
fn raw_offence(args: &[&str], expect: (u16, &str), misbehave: impl FnOnce(&mut RawClient)) {
    let server = Server::start(args);
    let mut witness = server.join();
    let mut raw = RawClient::connect(server.ws);
    let offender = offender_joined(&mut witness);
    misbehave(&mut raw);
    let (code, reason) = raw.close_code();
    assert_eq!(code, expect.0, "close reason was {reason:?}");
    assert!(
        reason.contains(expect.1),
        "reason {reason:?} lacks {:?}",
        expect.1
    );
    offender_left_and_room_works(&mut witness, &offender);
}

#[test]
fn oversized_message_closes_with_1009_and_the_limit_itself_passes() {
    let server = Server::start(&["--max-message-bytes", "1000"]);
    let mut witness = server.join();
    let mut big = server.join();
    let offender = offender_joined(&mut witness);
    big.say(&"a".repeat(1000));
    assert_eq!(witness.line(), format!("{offender}: {}", "a".repeat(1000)));
    big.say(&"b".repeat(1001));
    assert_eq!(big.close_frame().0, 1009);
    offender_left_and_room_works(&mut witness, &offender);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    raw_offence(&[], (1007, "UTF-8"), |raw| {
        raw.send_frame(0x81, MASK, &[b'h', 0xff, 0xfe])
    });
}

#[test]
fn binary_closes_with_1003_text_only() {
    raw_offence(&[], (1003, "text messages only"), |raw| {
        raw.send_frame(0x82, MASK, b"\x00\x01")
    });
}

#[test]
fn protocol_violations_close_with_1002() {
    let cases: [(&str, u8, Option<[u8; 4]>); 5] = [
        ("unmasked frame", 0x81, None),
        ("reserved bits", 0x81 | 0x40, MASK),
        ("unknown opcode", 0x83, MASK),
        ("fragmented control frame", 0x09, MASK),
        ("continuation without a start", 0x80, MASK),
    ];
    for (what, first, mask) in cases {
        eprintln!("case: {what}");
        raw_offence(&[], (1002, ""), |raw| raw.send_frame(first, mask, b"hi"));
    }
}

#[test]
fn plain_http_on_the_websocket_port_gets_426_naming_the_page() {
    let server = Server::start(&[]);
    let (status, head, body) = get(server.ws, "/");
    assert_eq!(status, 426);
    assert!(head.contains("Upgrade: websocket"));
    assert_eq!(body.lines().count(), 1);
    assert!(body.contains(&format!("http://{}/", server.http)));
    // The listener is unharmed.
    server.join();
}

#[test]
fn unfinished_handshakes_are_dropped_and_do_not_delay_a_real_join() {
    let server = Server::start(&["--handshake-timeout", "0.5"]);
    let mut slow = TcpStream::connect(server.ws).unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    // Dropped: the server closes without answering.
    let mut rest = Vec::new();
    assert_eq!(slow.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn a_thousand_slowloris_connections_do_not_block_a_join() {
    raise_own_open_file_limit();
    // Long enough that all of them are still hanging while the real client joins; and
    // all from one address, which its default share would cut short.
    let server = Server::start(&[
        "--handshake-timeout",
        "60",
        "--max-clients-per-address",
        "0",
    ]);
    let hanging: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(server.ws).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let mut client = server.join();
    client.say("through");
    assert_eq!(client.line(), format!("{}: through", client.nickname));
    // None of the hanging ones was answered or dropped to make room.
    for mut s in hanging.iter().take(50) {
        s.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let still_open =
            matches!(s.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(still_open);
    }
}

#[test]
fn connections_over_max_clients_get_503_before_the_upgrade() {
    let server = Server::start(&["--max-clients", "2"]);
    let mut a = server.join();
    let b = server.join();
    match handshake(&server.ws_url("/"), &[]) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    a.line();
    drop(b);
    a.line(); // b's leave
    eventually("a free place after a leave", || {
        handshake(&server.ws_url("/"), &[]).is_ok()
    });
}

#[test]
fn origins_of_other_sites_get_403() {
    let server = Server::start(&["--allow-origin", "http://friend.example"]);
    let url = server.ws_url("/");
    let status = |origin: &str| match handshake(&url, &[("Origin", origin)]) {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status("http://evil.example"), 403);
    assert_eq!(
        status(&format!("http://127.0.0.1:{}", server.http.port())),
        101
    );
    assert_eq!(status("http://friend.example"), 101);
    assert!(
        handshake(&url, &[]).is_ok(),
        "no Origin (scripts) is accepted"
    );

    let open = Server::start(&["--allow-origin", "*"]);
    assert!(handshake(&open.ws_url("/"), &[("Origin", "http://anyone.example")]).is_ok());
}

/// A client that stops reading. Its receive window stays at the default (a reader that
/// never reads does not grow it), so backpressure reaches the server after a few MB.
fn stalled_client(server: &Server) -> tungstenite::WebSocket<TcpStream> {
    let socket = TcpStream::connect(server.ws).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let (ws, _) = tungstenite::client(server.ws_url("/"), socket).unwrap();
    ws
}

/// Sends `count` lines of `size` bytes from the witness, a window at a time so that the
/// witness itself keeps up; returns how many of its own lines came back, and checks that
/// the stalled client's leave arrived among them.
fn flood_from(witness: Client, count: usize, size: usize, until_leave_of: String) -> usize {
    // About 1 MB unread at most, so the witness never looks like a slow client itself,
    // even next to a write timeout of a fraction of a second.
    let window = ((1 << 20) / size).clamp(1, 64);
    let Client { mut ws, nickname } = witness;
    let line = "z".repeat(size);
    let mine = format!("{nickname}: {line}");
    let left = format!(" .... {until_leave_of} has left.");
    let (mut sent, mut echoed, mut saw_leave) = (0, 0, false);
    while echoed < count {
        while sent < count && sent < echoed + window {
            ws.send(Message::text(line.clone())).unwrap();
            sent += 1;
        }
        let got = read_text(&mut ws);
        if got == mine {
            echoed += 1;
        } else if got == left {
            saw_leave = true;
        } else {
            panic!("unexpected line {:.80}", got);
        }
    }
    if !saw_leave {
        assert_eq!(
            read_text(&mut ws),
            left,
            "the stalled client was never announced as left"
        );
    }
    echoed
}

#[test]
fn a_client_that_stops_reading_is_evicted_with_1008_and_memory_stays_bounded() {
    let server = Server::start(&["--rate-limit", "0", "--write-timeout", "60"]);
    let mut witness = server.join();
    let mut stalled = stalled_client(&server);
    let offender = offender_joined(&mut witness);
    // Far more than kernel buffers plus the outbox can hold.
    let echoed = flood_from(witness, 3000, 8 * 1024, offender);
    assert_eq!(echoed, 3000, "the witness lost lines");
    assert!(
        rss_kib(server.pid()) < 256 * 1024,
        "server memory grew without bound"
    );
    // Now the stalled client reads: what was already written, then the close.
    assert_eq!(expect_close(&mut stalled), (1008, "too slow".to_owned()));
}

#[test]
fn a_write_blocked_past_the_write_timeout_drops_the_client() {
    let server = Server::start(&["--rate-limit", "0", "--write-timeout", "0.3"]);
    let mut witness = server.join();
    let _stalled = stalled_client(&server);
    let offender = offender_joined(&mut witness);
    // Fewer frames than the outbox holds, but more bytes than the socket buffers.
    let echoed = flood_from(witness, 400, 60 * 1024, offender);
    assert_eq!(echoed, 400);
}

#[test]
fn a_silent_dead_peer_is_dropped_while_a_live_one_stays() {
    let server = Server::start(&["--ping-interval", "0.1", "--pong-timeout", "0.5"]);
    let mut witness = server.join();
    let _dead = RawClient::connect(server.ws); // never reads, never answers a ping
    let offender = offender_joined(&mut witness);
    // The witness answers pings as it reads, so it outlives the dead one.
    assert_eq!(witness.line(), format!(" .... {offender} has left."));
    let mut saw_ping = false;
    witness.say("alive");
    loop {
        match witness.ws.read().unwrap() {
            Message::Ping(_) => saw_ping = true,
            Message::Text(t) if t.as_str() == format!("{}: alive", witness.nickname) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    eventually("a ping reaches the witness", || {
        saw_ping = saw_ping || matches!(witness.ws.read(), Ok(Message::Ping(_)));
        saw_ping
    });
}

#[test]
fn a_flood_is_refused_with_a_private_notice_and_then_closed_with_1008() {
    let server = Server::start(&["--rate-limit", "5", "--flood-close", "1"]);
    let mut witness = server.join();
    let mut flooder = server.join();
    let offender = offender_joined(&mut witness);
    for i in 0..30 {
        flooder.say(&format!("spam {i}"));
    }
    // The burst (2 x 5) gets through; the rest are refused, to the flooder alone.
    let mut notices = 0;
    for _ in 0..30 {
        match flooder.line().as_str() {
            " .... slow down: message not sent" => notices += 1,
            line => assert!(line.starts_with(&format!("{offender}: spam "))),
        }
    }
    assert!(notices >= 15, "only {notices} refusals");
    // Keep flooding until the server closes the connection.
    let closed = loop {
        if flooder.ws.send(Message::text("more")).is_err() {
            break expect_close(&mut flooder.ws);
        }
        match flooder.ws.read() {
            Ok(Message::Close(Some(frame))) => {
                break (u16::from(frame.code), frame.reason.to_string())
            }
            Ok(_) => {}
            Err(e) => panic!("closed without a close frame: {e}"),
        }
    };
    assert_eq!(closed.0, 1008);
    // The witness saw the burst, never a refusal, then the leave.
    let seen = witness.until(&format!(" .... {offender} has left."));
    assert!(
        seen.len() >= 10 && seen.len() < 30,
        "witness saw {} lines",
        seen.len()
    );
    assert!(seen.iter().all(|l| l.starts_with(&format!("{offender}: "))));
}

#[test]
fn sigterm_and_sigint_close_every_client_with_1001_and_exit_0() {
    for signal in ["TERM", "INT"] {
        let mut server = Server::start(&[]);
        let mut a = server.join();
        let mut b = server.join();
        a.line();
        let status = server.signal_and_wait(signal);
        assert!(status.success(), "SIG{signal}: {status:?}");
        for client in [&mut a, &mut b] {
            assert_eq!(
                client.close_frame(),
                (1001, "server shutting down".to_owned())
            );
        }
    }
}

#[test]
fn the_open_file_limit_is_raised_and_sets_the_default_max_clients() {
    let hard = own_hard_open_file_limit();
    let server = Server::start_with_soft_file_limit(256);
    let line = server
        .startup
        .iter()
        .find(|l| l.contains("open-file limit"))
        .expect("a startup line about the open-file limit");
    assert!(line.contains(&format!("open-file limit {hard}")), "{line}");
    // 64 kept back, and the page server's share: 512, or an eighth if less.
    let expected_max = (hard - 64 - (hard / 8).min(512)).min(50_000);
    assert!(
        line.contains(&format!("at most {expected_max} clients")),
        "{line}"
    );
}

#[test]
fn the_page_server_answers_only_get_and_head() {
    let server = Server::start(&[]);
    let host = server.http;
    let (status, head, _) = http(
        host,
        &format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"));
    let (status, _, body) = http(
        host,
        &format!("HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200);
    assert!(body.is_empty());
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_long_burst_does_not_evict_clients_that_read() {
    let server = Server::start(&["--rate-limit", "0"]);
    let mut reader = server.join();
    let mut sender = server.join();
    let sender_name = offender_joined(&mut reader);
    const BURST: usize = 3000;
    let reading = std::thread::spawn(move || {
        for i in 0..BURST {
            assert_eq!(reader.line(), format!("{sender_name}: burst {i}"));
        }
    });
    for i in 0..BURST {
        sender.say(&format!("burst {i}"));
    }
    // The sender reads only now: its socket buffers hold what its writer sent meanwhile.
    for i in 0..BURST {
        assert_eq!(sender.line(), format!("{}: burst {i}", sender.nickname));
    }
    reading.join().expect("the reading client lost lines");
}
