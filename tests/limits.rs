//! Hostile and broken clients: each gets the answer the README promises, and a witness
//! connected throughout sees the offender come and go and nothing else go missing.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// What a loaded two-core CI machine may add to a promised time: a scheduling delay or two
/// for the server's threads and ours, and the poll that notices the event.
const MARGIN: Duration = Duration::from_millis(500);

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

/// Runs `misbehave` on a raw connection and checks the close code and reason it gets.
fn raw_offence(args: &[&str], expect: (u16, &str), misbehave: impl FnOnce(&mut RawClient)) {
    let server = Server::start(args);
    let mut witness = server.join();
    let mut raw = RawClient::connect(server.ws);
    let offender = offender_joined(&mut witness);
    misbehave(&mut raw);
    assert_eq!(raw.close_code(), (expect.0, expect.1.to_owned()));
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
    assert_eq!(big.close_frame(), (1009, "message too big".to_owned()));
    offender_left_and_room_works(&mut witness, &offender);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    raw_offence(&[], (1007, "invalid UTF-8"), |raw| {
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
fn protocol_violations_close_with_1002_and_tungstenites_description() {
    // The reason is tungstenite's own description of what was wrong, word for word.
    let cases: [(u8, Option<[u8; 4]>, &str); 5] = [
        (0x81, None, "Received an unmasked frame from client"),
        (0x81 | 0x40, MASK, "Reserved bits are non-zero"),
        (0x83, MASK, "Encountered invalid opcode: 3"),
        (0x09, MASK, "Fragmented control frame"),
        (0x80, MASK, "Continue frame but nothing to continue"),
    ];
    for (first, mask, reason) in cases {
        eprintln!("case: {reason}");
        raw_offence(&[], (1002, reason), |raw| {
            raw.send_frame(first, mask, b"hi")
        });
    }
}

#[test]
fn a_request_that_is_not_a_websocket_handshake_gets_400_saying_why() {
    let server = Server::start(&[]);
    let addr = server.ws;
    let upgrade =
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    let cases = [
        (
            format!("{upgrade}Sec-WebSocket-Version: 13\r\n\r\n"),
            "Sec-WebSocket-Key",
        ),
        (
            format!("{upgrade}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"),
            "Sec-WebSocket-Version",
        ),
    ];
    for (request, why) in cases {
        let (status, head, body) = http(addr, &request);
        assert_eq!(status, 400, "{body}");
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert_eq!(body.lines().count(), 1, "{body:?}");
        assert!(body.contains(why), "{body:?} does not say {why}");
    }
    // The listener is unharmed.
    server.join();
}

#[test]
fn plain_http_on_the_websocket_port_gets_426_naming_the_page() {
    let server = Server::start(&[]);
    let (status, head, body) = get(server.ws, "/");
    assert_eq!(status, 426);
    assert!(
        head.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{head}"
    );
    assert!(head.contains("Upgrade: websocket"));
    assert_eq!(body.lines().count(), 1);
    assert!(body.contains(&format!("http://{}/", server.http)));
    // The listener is unharmed.
    server.join();
}

#[test]
fn unfinished_handshakes_are_dropped_and_do_not_delay_a_real_join() {
    const DEADLINE: Duration = Duration::from_millis(500);
    let server = Server::start(&["--handshake-timeout", "0.5"]);
    let mut slow = TcpStream::connect(server.ws).unwrap();
    let connected = Instant::now();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    // A byte every 100 ms: a timeout per read would never fire, the deadline must.
    let mut trickle = slow.try_clone().unwrap();
    std::thread::spawn(move || {
        for byte in
            b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if trickle.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Meanwhile a real client joins and chats.
    let mut client = server.join();
    client.say("not delayed");
    assert_eq!(client.line(), format!("{}: not delayed", client.nickname));
    // Dropped when the deadline passes: the server closes without answering.
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let dropped = connected.elapsed();
    assert!(
        rest.is_empty(),
        "answered {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        dropped >= DEADLINE && dropped <= DEADLINE + MARGIN,
        "dropped {dropped:?} after connecting"
    );
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

/// How a flood from the witness went.
struct Flood {
    /// How many of its own lines came back to the witness.
    echoed: usize,
    /// When the witness read the stalled client's leave.
    leave_at: Instant,
    /// When the witness read its last own line.
    last_echo_at: Instant,
}

/// Sends `count` lines of `size` bytes from the witness, a window at a time so that the
/// witness itself keeps up; counts its own lines that came back, and checks that the stalled
/// client's leave arrived among them or after them.
fn flood_from(witness: Client, count: usize, size: usize, until_leave_of: String) -> Flood {
    // About 1 MB unread at most, so the witness never looks like a slow client itself,
    // even next to a write timeout of a fraction of a second.
    let window = ((1 << 20) / size).clamp(1, 64);
    let Client { mut ws, nickname } = witness;
    let line = "z".repeat(size);
    let mine = format!("{nickname}: {line}");
    let left = format!(" .... {until_leave_of} has left.");
    let (mut sent, mut echoed, mut leave_at) = (0, 0, None);
    let mut last_echo_at = Instant::now();
    while echoed < count {
        while sent < count && sent < echoed + window {
            ws.send(Message::text(line.clone())).unwrap();
            sent += 1;
        }
        let got = read_text(&mut ws);
        if got == mine {
            echoed += 1;
            last_echo_at = Instant::now();
        } else if got == left && leave_at.is_none() {
            leave_at = Some(Instant::now());
        } else {
            panic!("unexpected line {:.80}", got);
        }
    }
    let leave_at = leave_at.unwrap_or_else(|| {
        assert_eq!(
            read_text(&mut ws),
            left,
            "the stalled client was never announced as left"
        );
        Instant::now()
    });
    Flood {
        echoed,
        leave_at,
        last_echo_at,
    }
}

/// The server's resident memory now, and its peak since it started.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_client_that_stops_reading_is_evicted_with_1008_and_memory_stays_bounded() {
    const LAG_LIMIT_KIB: u64 = 4 * 1024; // the default --max-lag-bytes
                                         // Heap and stacks that come and go with the traffic (frames in flight, the witness's
                                         // messages), besides what the log keeps: measured at 2-3 MiB.
    const WORKING_SET_KIB: u64 = 8 * 1024;
    const LINES: usize = 6000;
    const LINE_BYTES: usize = 8 * 1024;
    let server = Server::start(&[
        "--rate-limit",
        "0",
        "--write-timeout",
        "60",
        "--admin-port",
        "0",
    ]);
    let mut witness = server.join();
    let mut stalled = stalled_client(&server);
    let offender = offender_joined(&mut witness);
    let (before, _) = memory_kib(server.pid());
    // Twelve times the lag limit: a log that kept what everyone has read would hold it all.
    let flood = flood_from(witness, LINES, LINE_BYTES, offender);
    assert_eq!(flood.echoed, LINES, "the witness lost lines");
    let (_, peak) = memory_kib(server.pid());
    let sent_kib = (LINES * LINE_BYTES / 1024) as u64;
    assert!(
        peak.saturating_sub(before) < LAG_LIMIT_KIB + WORKING_SET_KIB,
        "server memory grew by {} KiB while {sent_kib} KiB went by (from {before} KiB)",
        peak.saturating_sub(before)
    );
    // Now the stalled client reads: what was already written, then the close.
    assert_eq!(expect_close(&mut stalled), (1008, "too slow".to_owned()));
    // The admin port counts it under its cause, and not as timed out (the witness, dropped
    // by the flood's end, counts as lost).
    let ended = ended_as(&server);
    assert!(ended.contains(&("too_slow".to_owned(), 1)), "{ended:?}");
    assert!(
        !ended.iter().any(|(c, _)| c == "write_timeout"),
        "{ended:?}"
    );
}

/// The causes the admin port has counted connections as ended for, those above 0.
fn ended_as(server: &Server) -> Vec<(String, u64)> {
    let (_, _, metrics) = get(server.admin.expect("an admin port"), "/metrics");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("threadchat_connections_ended_total{cause=\""))
        .filter_map(|l| {
            let (cause, count) = l.split_once("\"} ")?;
            Some((cause.to_owned(), count.parse().ok()?))
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

#[test]
fn a_write_blocked_past_the_write_timeout_drops_the_client() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
    // The lag limit is far above everything sent, so only the write timeout can drop it.
    let server = Server::start(&[
        "--rate-limit",
        "0",
        "--write-timeout",
        "1",
        "--max-lag-bytes",
        "1073741824",
    ]);
    let mut witness = server.join();
    let mut stalled = stalled_client(&server);
    let offender = offender_joined(&mut witness);
    let joined = Instant::now();
    // 24 MiB: more bytes than the socket buffers hold, a fortieth of the lag limit.
    let flood = flood_from(witness, 400, 60 * 1024, offender);
    assert_eq!(flood.echoed, 400);
    // Its socket cannot have been full before it joined, and was full by the last echo.
    assert!(
        flood.leave_at >= joined + WRITE_TIMEOUT,
        "dropped {:?} after joining, before the write timeout",
        flood.leave_at - joined
    );
    assert!(
        flood.leave_at <= flood.last_echo_at + WRITE_TIMEOUT + MARGIN,
        "dropped {:?} after the flood ended",
        flood.leave_at.saturating_duration_since(flood.last_echo_at)
    );
    // It reads at last: its close says it was not reading, not that it was too far behind.
    assert_eq!(expect_close(&mut stalled), (1008, "not reading".to_owned()));
}

#[test]
fn a_closing_client_that_falls_out_of_the_log_is_let_go() {
    // Far behind, but not yet by the lag limit, it sends its close; the room moves on past
    // what it still had to get, so it can never have its close reply: its connection ends.
    let server = Server::start(&[
        "--rate-limit",
        "0",
        "--write-timeout",
        "30",
        "--max-lag-bytes",
        "16777216",
    ]);
    let mut witness = server.join();
    let mut closing = stalled_client(&server);
    let name = offender_joined(&mut witness);
    // 12 MiB: more than the socket buffers hold, less than the lag limit.
    echoed_flood(&mut witness, 192);
    closing.close(None).unwrap();
    closing.flush().unwrap();
    assert_eq!(witness.line(), format!(" .... {name} has left."));
    echoed_flood(&mut witness, 320); // 20 MiB more: its place is gone
    loop {
        match closing.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) => {
                assert!(
                    !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "still connected after {PATIENCE:?}"
                );
                break;
            }
            Err(_) => break,
        }
    }
}

#[test]
fn a_client_connected_longer_than_the_write_timeout_may_fall_behind_for_a_moment() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
    let server = Server::start(&[
        "--rate-limit",
        "0",
        "--write-timeout",
        "3",
        "--max-lag-bytes",
        "1073741824",
    ]);
    let mut witness = server.join();
    let mut slow = server.join();
    offender_joined(&mut witness);
    // The timeout counts from the last byte the socket took, not from the join: let the
    // connection grow older than the timeout, with nothing to send it meanwhile.
    std::thread::sleep(WRITE_TIMEOUT + Duration::from_millis(500));
    // 16 MiB, far more than the socket buffers hold, while it does not read: it blocks.
    const LINES: usize = 256;
    let mine = echoed_flood(&mut witness, LINES);
    // It reads again within the timeout: every line, and it is still there.
    for _ in 0..LINES {
        let got = slow.line();
        assert!(got == mine, "it got {got:.80}");
    }
    slow.say("still here");
    let here = format!("{}: still here", slow.nickname);
    assert_eq!(witness.line(), here, "it was dropped");
}

#[test]
fn a_silent_dead_peer_is_dropped_with_1001_while_a_live_one_stays() {
    const PONG_TIMEOUT: Duration = Duration::from_millis(500);
    let server = Server::start(&["--ping-interval", "0.1", "--pong-timeout", "0.5"]);
    let mut witness = server.join();
    let connected = Instant::now();
    let mut dead = RawClient::connect(server.ws); // never answers a ping
    let offender = offender_joined(&mut witness);
    // The witness answers pings as it reads, so it outlives the dead one, which is dropped
    // once it has been silent for the pong timeout.
    let by = connected + PONG_TIMEOUT + MARGIN;
    let left = line_by(&mut witness, by)
        .unwrap_or_else(|| panic!("not dropped within {PONG_TIMEOUT:?} + {MARGIN:?}"));
    assert_eq!(left, format!(" .... {offender} has left."));
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
    // What the dead peer's socket holds: the lines and pings it never read, then the close.
    assert_eq!(dead.close_code(), (1001, "silent too long".to_owned()));
}

#[test]
fn a_flood_is_refused_with_a_private_notice_and_then_closed_with_1008() {
    const FLOOD_CLOSE: Duration = Duration::from_secs(1);
    let server = Server::start(&["--rate-limit", "5", "--flood-close", "1"]);
    let mut witness = server.join();
    let mut flooder = server.join();
    let offender = offender_joined(&mut witness);
    // The flood starts with the first refusal, a little after this.
    let flooding = Instant::now();
    for i in 0..30 {
        flooder.say(&format!("spam {i}"));
    }
    // The burst (2 x 5) gets through; the rest are refused, to the flooder alone. Each
    // message is either echoed or refused, never both, never neither.
    let mut notices = 0;
    let mut echoed = Vec::new();
    for _ in 0..30 {
        match flooder.line() {
            line if line == " .... slow down: message not sent" => notices += 1,
            line => {
                assert!(line.starts_with(&format!("{offender}: spam ")), "{line}");
                echoed.push(line);
            }
        }
    }
    assert!(notices >= 15, "only {notices} refusals");
    // Keep flooding until the server closes the connection, once the flood has lasted
    // --flood-close.
    let closed = loop {
        assert!(
            flooding.elapsed() < FLOOD_CLOSE + MARGIN,
            "still open {:?} into the flood",
            flooding.elapsed()
        );
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
    assert_eq!(closed, (1008, "flooding".to_owned()));
    // The witness saw exactly the messages that got through, never a refusal, then lines
    // from the flood that followed, then the leave.
    let seen = witness.until(&format!(" .... {offender} has left."));
    assert_eq!(seen[..echoed.len()], echoed[..]);
    assert!(
        seen[echoed.len()..]
            .iter()
            .all(|l| *l == format!("{offender}: more")),
        "{seen:?}"
    );
}

/// How many lines the server has refused as a flood so far, and how many it has appended
/// (joins, lines and leaves).
fn refused_and_appended(server: &Server) -> (u64, u64) {
    let (_, _, metrics) = get(server.admin.expect("an admin port"), "/metrics");
    let sample = |prefix: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (
        sample("threadchat_lines_refused_total{why=\"flood\"} "),
        sample("threadchat_lines_total "),
    )
}

#[test]
fn a_flooder_that_never_reads_is_owed_no_more_notices_than_its_outbox_holds() {
    // Its flood never lasts long enough to close it, its socket is never dropped and it is
    // never too far behind: only the notices it is owed could grow. Half its burst a second
    // gets through, so the log keeps moving and its writer keeps passing over it.
    const LINES: u64 = 300_000;
    const BIG_BYTES: usize = 4000;
    // A burst of twice the largest send buffer fills its socket.
    let burst = 2 * largest_send_buffer() / BIG_BYTES;
    let (rate, lag) = (
        (burst / 2).to_string(),
        (16 * largest_send_buffer()).to_string(),
    );
    let server = Server::start(&[
        "--admin-port",
        "0",
        "--rate-limit",
        &rate,
        "--flood-close",
        "600",
        "--write-timeout",
        "600",
        "--max-lag-bytes",
        &lag,
    ]);
    let from = "127.0.0.1".parse().unwrap();
    let socket = connect_from_with_receive_buffer(from, server.ws, Some(4096));
    let (mut flooder, _) = tungstenite::client(server.ws_url("/"), socket).unwrap();
    // Its burst (2,000 lines of 4 KB with the default 4 MiB) fills its socket: from then on
    // what it is owed waits, the lines in the log it keeps.
    let big = "b".repeat(BIG_BYTES);
    for _ in 0..burst {
        flooder.send(Message::text(big.as_str())).unwrap();
    }
    eventually("the burst to be appended", || {
        refused_and_appended(&server).1 > burst as u64
    });
    let (before, _) = memory_kib(server.pid());
    // Each line past the burst is refused with a notice to it alone.
    for _ in 0..LINES - burst as u64 {
        flooder.send(Message::text("x")).unwrap();
    }
    eventually("every line to be read, and appended or refused", || {
        let (refused, appended) = refused_and_appended(&server);
        refused + appended > LINES // and its own join
    });
    let (refused, _) = refused_and_appended(&server);
    assert!(refused > LINES / 2, "only {refused} refused");
    let (after, _) = memory_kib(server.pid());
    // Kept, the notices would take megabytes (2.2-2.7 MB more, when the writer took them
    // from the outbox while the socket was full); its outbox holds 64.
    assert!(
        after < before + 1024,
        "RSS grew from {before} to {after} KiB"
    );
}

#[test]
fn sigterm_and_sigint_close_every_client_with_1001_and_exit_0_within_2_s() {
    const PROMISED: Duration = Duration::from_secs(2);
    for signal in ["TERM", "INT"] {
        // A lag limit and a write timeout the test never reaches, so the stalled client stays.
        let mut server = Server::start(&[
            "--rate-limit",
            "0",
            "--write-timeout",
            "60",
            "--max-lag-bytes",
            "1073741824",
        ]);
        let mut a = server.join();
        let mut b = server.join();
        let _stalled = stalled_client(&server);
        let stalled_name = {
            a.line(); // b's join
            offender_joined(&mut a)
        };
        assert_eq!(b.line(), format!(" .... {stalled_name} has joined."));
        // 16 MiB the stalled client never reads: far more than its socket buffers hold, so
        // its close frame cannot reach it and the server must not wait for it.
        let (mut from_b, b_name) = (b.ws, b.nickname);
        let line = "y".repeat(64 * 1024);
        let echo = format!("{b_name}: {line}");
        for i in 0..256 {
            from_b.send(Message::text(line.clone())).unwrap();
            assert!(
                read_text(&mut from_b) == echo,
                "b's line {i} did not come back"
            );
            assert!(a.line() == echo, "a did not get b's line {i}");
        }
        let signalled = Instant::now();
        let status = server.signal_and_wait(signal);
        let took = signalled.elapsed();
        assert!(status.success(), "SIG{signal}: {status:?}");
        assert!(
            took <= PROMISED + MARGIN,
            "SIG{signal}: exited {took:?} after the signal"
        );
        // Nothing came between the last line and the close: nobody had left.
        for ws in [&mut a.ws, &mut from_b] {
            match ws.read() {
                Ok(Message::Close(Some(frame))) => assert_eq!(
                    (u16::from(frame.code), frame.reason.as_str()),
                    (1001, "server shutting down")
                ),
                other => panic!("SIG{signal}: expected close 1001, got {other:?}"),
            }
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

/// A TCP connection whose receive buffer is 4 KiB, set before it connects as a hostile
/// client sets it: the window it offers stays tiny, so the server's socket to it is full
/// after a few KiB.
fn tiny_window_connect(to: std::net::SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let remote = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let size: libc::c_int = 4096;
    // SAFETY: a fresh socket, owned by the TcpStream as soon as it exists; the option and
    // the address are live locals of the lengths passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let socket = TcpStream::from_raw_fd(fd);
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(set, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let connected = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert_eq!(connected, 0, "connect: {}", io::Error::last_os_error());
        socket
    }
}

/// The bytes the server's end of `client` holds that the client has not acknowledged: while
/// it does not change, that socket takes nothing.
fn server_side_unacked(server: &Server, client: &TcpStream) -> Option<u64> {
    server_side_queues(server, client).map(|(unacked, _)| unacked)
}

#[test]
fn a_sender_that_never_reads_is_closed_after_the_write_timeout_and_can_read_its_close() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
    /// The promise: dropped within a second of the write timeout.
    const PROMISED: Duration = Duration::from_secs(1);
    const MESSAGES: usize = 8000;
    // No rate or lag limit to act first: only the write timeout may end it.
    let server = Server::start(&[
        "--rate-limit",
        "0",
        "--write-timeout",
        "2",
        "--max-lag-bytes",
        "1073741824",
        "--admin-port",
        "0",
    ]);
    let mut witness = server.join();
    let socket = tiny_window_connect(server.ws);
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    socket.set_write_timeout(Some(PATIENCE)).unwrap();
    let (mut flooder, _) =
        tungstenite::client(server.ws_url("/"), socket.try_clone().unwrap()).expect("handshake");
    let offender = offender_joined(&mut witness);

    // The witness reads on its own thread, as every line comes, until the offender's leave.
    let (left_tx, left_rx) = std::sync::mpsc::channel();
    let leave = format!(" .... {offender} has left.");
    let from_offender = format!("{offender}: ");
    let watching = std::thread::spawn(move || {
        let mut heard = 0;
        loop {
            let line = witness.line();
            if line == leave {
                let _ = left_tx.send(Instant::now());
                break;
            }
            assert!(line.starts_with(&from_offender), "{line:.80}");
            heard += 1;
        }
        witness.say("after it");
        assert_eq!(witness.line(), format!("{}: after it", witness.nickname));
        heard
    });

    // 8 MB of 1000-byte messages, as fast as the socket takes them; never a read.
    let mut frame = vec![0x81, 0x80 | 126];
    frame.extend_from_slice(&1000u16.to_be_bytes());
    frame.extend_from_slice(&[0; 4]); // a zero mask: the payload goes as it is
    frame.extend_from_slice(&[b'x'; 1000]);
    let mut out = socket.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        for _ in 0..MESSAGES {
            out.write_all(&frame).map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    });

    // When the server's socket to it last took anything before it was let go.
    let mut changes = Vec::new();
    let mut last = None;
    let deadline = Instant::now() + PATIENCE * 3;
    let left_at = loop {
        let unacked = server_side_unacked(&server, &socket);
        if unacked != last {
            changes.push(Instant::now());
            last = unacked;
        }
        if let Ok(at) = left_rx.try_recv() {
            break at;
        }
        assert!(Instant::now() < deadline, "never dropped; unacked {last:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    // Its close frame goes into the socket as it is dropped: the stall ended before that.
    let stalled_from = changes
        .iter()
        .rev()
        .find(|&&at| at + Duration::from_millis(200) < left_at)
        .copied()
        .expect("the server's socket never took anything");
    // Acknowledgements may move it after the writer's last send: no lower bound here; the
    // close reason says that the write timeout, and nothing else, ended it.
    let waited = left_at - stalled_from;
    assert!(
        waited <= WRITE_TIMEOUT + PROMISED,
        "dropped {waited:?} after its socket last took something"
    );
    assert_eq!(
        sending.join().unwrap(),
        Ok(()),
        "the server stopped reading it"
    );
    let heard = watching.join().expect("the witness lost lines");
    assert!(heard > 0, "the witness heard none of its lines");

    // It reads at last: whole lines, then its close frame and reason.
    assert_eq!(expect_close(&mut flooder), (1008, "not reading".to_owned()));
    let ended = ended_as(&server);
    assert!(
        ended.contains(&("write_timeout".to_owned(), 1)),
        "{ended:?}"
    );
    assert!(!ended.iter().any(|(c, _)| c == "too_slow"), "{ended:?}");
}
