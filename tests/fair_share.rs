//! Nobody holds the server hostage: the page port closes what does not arrive in time and
//! holds a bounded number of connections, and one address gets a share of each port, not
//! all of it. Clients at other addresses come from elsewhere in 127.0.0.0/8.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Far more than a socket's send buffer (4 MiB at most here) and a small receive window.
const BIG_FILE_BYTES: usize = 8 * 1024 * 1024;

fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A page connection that sends half a request and then nothing.
fn slow_page_connection(socket: TcpStream) -> TcpStream {
    let mut socket = socket;
    socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    socket
}

fn get_request() -> &'static str {
    "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
}

/// The status and one-line body of a refused WebSocket handshake.
fn refused_handshake(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match handshake(url, headers) {
        Err(tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the handshake succeeded"),
    }
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn two_thousand_slow_page_connections_are_closed_by_the_deadline_and_all_is_given_back() {
    raise_own_open_file_limit();
    const SLOW: usize = 2000;
    let timeout = Duration::from_secs(3);
    let server = Server::start(&[
        "--handshake-timeout",
        "3",
        // Room for all of them at once, from one address: here it is the deadline that
        // must close them, not a limit that turns them away.
        "--max-page-connections",
        "2500",
        "--max-clients-per-address",
        "0",
    ]);
    let mut witness = server.join();
    let pid = server.pid();
    let threads_before = count_entries(format!("/proc/{pid}/task"));
    let files_before = count_entries(format!("/proc/{pid}/fd"));

    let slow: Vec<(TcpStream, Instant)> = (0..SLOW)
        .map(|_| {
            let socket = slow_page_connection(TcpStream::connect(server.http).unwrap());
            (socket, Instant::now())
        })
        .collect();

    // While they hang, the page is served, the room talks, and a newcomer joins.
    let (status, _, body) = get(server.http, "/");
    assert_eq!(status, 200);
    assert!(body.contains("<title>"));
    let newcomer = server.join();
    assert_eq!(
        witness.line(),
        format!(" .... {} has joined.", newcomer.nickname)
    );
    witness.say("still here");
    assert_eq!(witness.line(), format!("{}: still here", witness.nickname));

    // Each is closed, unanswered, within the timeout and 2 s of being opened.
    for (i, (mut socket, opened)) in slow.into_iter().enumerate() {
        let by = opened + timeout + Duration::from_secs(2);
        let left = by.saturating_duration_since(Instant::now());
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut rest = Vec::new();
        match socket.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "slow connection {i} was answered"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("slow connection {i} still open 5 s after it was opened: {e}"),
        }
    }

    drop(newcomer);
    witness.line(); // the newcomer's leave
    eventually("threads and descriptors back to where they started", || {
        count_entries(format!("/proc/{pid}/task")) == threads_before
            && count_entries(format!("/proc/{pid}/fd")) == files_before
    });
}

#[test]
fn a_full_page_server_closes_its_longest_waiting_connection_to_serve_a_newcomer() {
    // A deadline far beyond the test: only making room can let the fifth in.
    let server = Server::start(&["--max-page-connections", "4", "--handshake-timeout", "60"]);
    // With 4 page connections, one address may hold one: the four come from four, and
    // the first, accepted first, waits longest.
    let mut hanging: Vec<TcpStream> = (2..6)
        .map(|n| slow_page_connection(connect_from(loopback(n), server.http)))
        .collect();
    let (status, head, _) = http_over(connect_from(loopback(6), server.http), get_request());
    assert_eq!(status, 200, "{head}");

    // The oldest was closed, unanswered; the others still wait.
    let mut oldest = hanging.remove(0);
    oldest.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut rest = Vec::new();
    match oldest.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "the closed one was answered"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    for (i, socket) in hanging.iter_mut().enumerate() {
        assert!(
            held_open(socket, Duration::from_millis(100)),
            "{i} was closed"
        );
    }
    eventually("the full server is logged", || {
        count_lines(&server.stderr(), "closing the longest waiting") == 1
    });
}

#[test]
fn a_full_page_server_closes_an_idle_kept_alive_connection_to_serve_a_newcomer() {
    let server = Server::start(&["--max-page-connections", "1"]);
    let mut idle = hold_a_page_place(loopback(2), server.http, true).expect("answered");
    let answered = Instant::now();
    // Well before the 3 s idle deadline could free the place. Its thread marks it idle a
    // moment after its answer is written, so a newcomer that came sooner may get 503.
    let served = Instant::now() + Duration::from_secs(1);
    loop {
        let socket = connect_from(loopback(3), server.http);
        match status_within(socket, PATIENCE) {
            Some(200) => break,
            Some(503) if Instant::now() < served => {}
            other => panic!("a newcomer got {other:?} after {:?}", answered.elapsed()),
        }
    }
    // Closed, and not by the idle deadline.
    let mut rest = Vec::new();
    match idle.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    let closed = answered.elapsed();
    assert!(
        closed < Duration::from_secs(2),
        "closed after {closed:?} idle"
    );
}

#[test]
fn a_full_page_server_answers_503_only_when_every_connection_is_being_answered() {
    // A file far larger than what the sockets buffer, to clients whose window stays small:
    // the server is still writing it when the third comes.
    let www = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fair_share_big_www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("big.bin"), vec![b'b'; BIG_FILE_BYTES]).unwrap();
    std::fs::write(www.join("index.html"), "<title>small</title>\n").unwrap();
    let server = Server::start(&[
        "--www",
        www.to_str().unwrap(),
        "--max-page-connections",
        "2",
        "--handshake-timeout",
        "60",
        "--write-timeout",
        "60",
    ]);
    let answering: Vec<TcpStream> = (2..4)
        .map(|n| {
            let mut socket = connect_from_with_receive_buffer(loopback(n), server.http, Some(4096));
            socket.set_read_timeout(Some(PATIENCE)).unwrap();
            socket
                .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut status = [0u8; 12];
            socket.read_exact(&mut status).unwrap();
            assert_eq!(&status, b"HTTP/1.1 200");
            socket
        })
        .collect();
    let asked = Instant::now();
    let (status, head, body) = http_over(connect_from(loopback(4), server.http), get_request());
    assert!(
        asked.elapsed() < AT_ONCE,
        "answered after {:?}",
        asked.elapsed()
    );
    assert_eq!(status, 503, "{head}");
    assert_eq!(body.lines().count(), 1, "{body:?}");
    // It says how many the page server holds at once.
    assert!(body.contains("busy: 2 connections at once"), "{body:?}");

    let mut client = server.join();
    client.say("in anyway");
    assert_eq!(client.line(), format!("{}: in anyway", client.nickname));

    drop(answering);
    eventually("the page is served again once they are gone", || {
        get(server.http, "/").0 == 200
    });
}

#[test]
fn four_addresses_reopening_their_share_of_slow_page_connections_keep_nobody_from_the_page() {
    const MAX: usize = 16;
    const SHARE: usize = MAX / 4;
    const VISITS: usize = 50;
    let server = Server::start(&[
        "--max-page-connections",
        &MAX.to_string(),
        "--handshake-timeout",
        "30",
    ]);
    let to = server.http;
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let reopened = Arc::new(AtomicUsize::new(0));
    // Each address holds its share, half of it half-sent heads, half kept-alive and idle,
    // and opens each again as soon as it is closed.
    let attackers: Vec<_> = (2..6)
        .flat_map(|n| (0..SHARE).map(move |i| (loopback(n), i % 2 == 0)))
        .map(|(from, idle)| {
            let (stop, held, reopened) = (stop.clone(), held.clone(), reopened.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if let Some(socket) = hold_a_page_place(from, to, idle) {
                        held.fetch_add(1, Ordering::AcqRel);
                        let refused = wait_until_closed(socket, &stop);
                        held.fetch_sub(1, Ordering::AcqRel);
                        if refused {
                            // Its address's place not yet given back: the pace of the attack.
                            thread::sleep(Duration::from_millis(10));
                        }
                    }
                    reopened.fetch_add(1, Ordering::AcqRel);
                }
            })
        })
        .collect();
    eventually("the four addresses hold every place", || {
        held.load(Ordering::Acquire) == MAX
    });

    for visit in 0..VISITS {
        let asked = Instant::now();
        let socket = connect_from(loopback(6), to);
        let status = status_within(socket, Duration::from_secs(1));
        assert_eq!(
            status,
            Some(200),
            "visit {visit} after {:?}: the page was kept away",
            asked.elapsed()
        );
    }
    stop.store(true, Ordering::Release);
    for attacker in attackers {
        attacker.join().expect("an attacking connection failed");
    }
    // The server was full, and made room.
    assert!(reopened.load(Ordering::Acquire) > 0);
    assert_eq!(
        count_lines(&server.stderr(), "closing the longest waiting"),
        1,
        "{}",
        server.stderr()
    );
}

/// One connection that takes a page place and holds it: half a head, or a whole HEAD
/// request answered and then nothing (kept alive, idle). None if it was refused or closed.
fn hold_a_page_place(from: IpAddr, to: std::net::SocketAddr, idle: bool) -> Option<TcpStream> {
    let mut socket = connect_from(from, to);
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    if !idle {
        socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").ok()?;
        return Some(socket);
    }
    socket
        .write_all(b"HEAD /config.js HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    if head.starts_with(b"HTTP/1.1 200") {
        Some(socket)
    } else {
        // Refused: its address's place not yet given back. The pace of the attack.
        thread::sleep(Duration::from_millis(10));
        None
    }
}

/// Blocks until the server closes `socket`, or the test stops. True if it was answered
/// (a 429 or a 503) rather than closed unanswered.
fn wait_until_closed(mut socket: TcpStream, stop: &AtomicBool) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut answered = false;
    let mut unread = [0u8; 1024];
    while !stop.load(Ordering::Acquire) {
        match socket.read(&mut unread) {
            Ok(0) => break,
            Ok(_) => answered = true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    answered
}

/// The status of a GET on `socket` if its whole answer arrives `within`, else None.
fn status_within(mut socket: TcpStream, within: Duration) -> Option<u16> {
    let by = Instant::now() + within;
    socket.write_all(get_request().as_bytes()).ok()?;
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let text = String::from_utf8_lossy(&all);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `socket` is still open and unanswered after `quiet`: used only to show that a
/// close does NOT come.
fn held_open(socket: &mut TcpStream, quiet: Duration) -> bool {
    socket.set_read_timeout(Some(quiet)).unwrap();
    let mut byte = [0u8; 1];
    matches!(socket.read(&mut byte), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

#[test]
fn one_address_gets_its_share_of_the_websocket_port_and_429_past_it() {
    let server = Server::start(&["--max-clients-per-address", "2"]);
    let url = server.ws_url("/");
    let mut first = server.join();
    let second = server.join();
    for _ in 0..5 {
        // At once, from the accepting thread: not when some deadline passes.
        let asked = Instant::now();
        let (status, body) = refused_handshake(&url, &[]);
        assert!(
            asked.elapsed() < AT_ONCE,
            "answered after {:?}",
            asked.elapsed()
        );
        assert_eq!(status, 429);
        assert_eq!(body.lines().count(), 1, "{body:?}");
        assert!(body.contains("at most 2 per address"), "{body:?}");
    }

    // Another address still joins.
    let socket = connect_from(loopback(2), server.ws);
    let (mut elsewhere, _) =
        tungstenite::client(url.as_str(), socket).expect("a join from 127.0.0.2");
    assert!(read_text(&mut elsewhere).ends_with(" has joined."));

    // A leave gives the place back.
    drop(second);
    eventually("a place for 127.0.0.1 once one of its clients left", || {
        handshake(&url, &[]).is_ok()
    });
    first.say("after");
    first.until(&format!("{}: after", first.nickname));

    // Logged once, not once per refusal.
    let logged = "127.0.0.1 holds 2 connections to the WebSocket port";
    eventually("the refusal is logged", || {
        count_lines(&server.stderr(), logged) > 0
    });
    assert_eq!(
        count_lines(&server.stderr(), logged),
        1,
        "{}",
        server.stderr()
    );
}

#[test]
fn with_trust_proxy_the_forwarded_address_is_the_one_counted() {
    let server = Server::start(&["--trust-proxy", "--max-clients-per-address", "2"]);
    let url = server.ws_url("/");
    let via = |forwarded: &str| Client::connect_with(&url, &[("X-Forwarded-For", forwarded)]);
    let _a = via("203.0.113.7");
    // What the client wrote before the proxy's entry proves nothing.
    let _b = via("198.51.100.1, 203.0.113.7");
    let (status, body) = refused_handshake(&url, &[("X-Forwarded-For", "203.0.113.7")]);
    assert_eq!(status, 429);
    assert!(body.contains("203.0.113.7"), "{body:?}");
    let _c = via("203.0.113.7, 198.51.100.8");
    // Every connection here comes from 127.0.0.1, the "proxy": it is not what is counted.
    let _d = via("198.51.100.9");
    let _e = server.join();
    let _f = server.join();
}

#[test]
fn one_address_gets_its_share_of_the_page_port_and_429_past_it() {
    let server = Server::start(&[
        "--max-clients-per-address",
        "2",
        "--handshake-timeout",
        "60",
    ]);
    let _hanging: Vec<TcpStream> = (0..2)
        .map(|_| slow_page_connection(TcpStream::connect(server.http).unwrap()))
        .collect();
    let asked = Instant::now();
    let (status, _, body) = get(server.http, "/");
    assert!(
        asked.elapsed() < AT_ONCE,
        "answered after {:?}",
        asked.elapsed()
    );
    assert_eq!(status, 429);
    assert_eq!(body.lines().count(), 1, "{body:?}");

    let (status, _, _) = http_over(connect_from(loopback(2), server.http), get_request());
    assert_eq!(status, 200, "another address is served");
    // The two ports are counted apart: the chat is still open to this address.
    let mut client = server.join();
    client.say("hi");
    assert_eq!(client.line(), format!("{}: hi", client.nickname));
}

#[test]
fn a_kept_alive_page_connection_idle_for_three_seconds_is_closed() {
    let server = Server::start(&[]);
    let mut socket = TcpStream::connect(server.http).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    socket
        .write_all(b"GET /config.js HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answered = Instant::now();
    // The answer, then the end of the stream once the idle time has passed.
    let mut all = Vec::new();
    socket.read_to_end(&mut all).unwrap();
    let idle = answered.elapsed();
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    // README: 3 s; half a second either way for a loaded machine.
    assert!(
        (Duration::from_millis(2500)..Duration::from_millis(3500)).contains(&idle),
        "closed after {idle:?} idle"
    );
}

#[test]
fn a_page_request_head_over_16_kib_gets_431() {
    let server = Server::start(&[]);
    let mut socket = TcpStream::connect(server.http).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let long = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "f".repeat(17 * 1024)
    );
    let _ = socket.write_all(long.as_bytes());
    let mut all = Vec::new();
    let _ = socket.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[test]
fn a_page_connection_lives_at_most_a_head_and_a_response_however_it_trickles() {
    let server = Server::start(&["--handshake-timeout", "1", "--write-timeout", "1"]);
    let mut socket = TcpStream::connect(server.http).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let opened = Instant::now();
    // Whole requests, each well within the idle and head deadlines, each answered: without
    // a bound on the connection's life, it would hold its place for ever.
    let mut answered = 0;
    let closed = loop {
        let asked = socket.write_all(b"GET /config.js HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut reply = [0u8; 4096];
        match (asked, socket.read(&mut reply)) {
            (Ok(()), Ok(n)) if n > 0 => answered += 1,
            _ => break opened.elapsed(),
        }
        assert!(
            opened.elapsed() < PATIENCE,
            "still open after {answered} requests"
        );
        std::thread::sleep(Duration::from_millis(200)); // the pace of the trickle
    };
    assert!(answered >= 2, "the connection was kept alive for a while");
    // A head's time and a response's time: 2 s; a second more for a loaded machine.
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
}

#[test]
fn a_page_request_head_with_bare_lf_line_ends_gets_400_at_once() {
    // A deadline far beyond the test: only an answer at once passes.
    let server = Server::start(&["--handshake-timeout", "30"]);
    for head in [
        "GET / HTTP/1.1\nHost: x\n\n",
        "GET / HTTP/1.1\r\nHost: x\n\r\n",
        "GET / HTTP/1.1\rHost: x\r\r",
    ] {
        let asked = Instant::now();
        let (status, _, body) = http(server.http, head);
        let took = asked.elapsed();
        assert_eq!(status, 400, "{head:?}");
        assert_eq!(body.lines().count(), 1, "{body:?}");
        // At once: a loaded machine's margin, far from the 30 s deadline.
        assert!(
            took < Duration::from_secs(1),
            "{head:?} answered after {took:?}"
        );
    }
    assert_eq!(get(server.http, "/").0, 200, "the page is still served");
}

#[test]
fn a_control_byte_in_a_page_request_header_gets_400() {
    let server = Server::start(&["--handshake-timeout", "30"]);
    for (what, header) in [
        ("NUL in a value", "X-Test: a\0b"),
        ("ESC in a value", "X-Test: a\x1bb"),
        ("DEL in a value", "X-Test: a\x7f"),
        ("SOH in a name", "X-T\x01est: a"),
    ] {
        let request = format!("GET / HTTP/1.1\r\nHost: x\r\n{header}\r\nConnection: close\r\n\r\n");
        let (status, _, body) = http(server.http, &request);
        assert_eq!(status, 400, "{what}");
        assert_eq!(body.lines().count(), 1, "{what}: {body:?}");
    }
    // A tab is no control byte to refuse.
    let with_tab = "GET / HTTP/1.1\r\nHost: x\r\nX-Test: a\tb\r\nConnection: close\r\n\r\n";
    assert_eq!(http(server.http, with_tab).0, 200);
}

/// README: half a page request is closed, unanswered, when the deadline passes. The deadline
/// is the head's, counted from the connection's start: a byte now and then does not move it.
#[test]
fn a_page_request_head_trickled_a_byte_at_a_time_is_closed_at_the_head_deadline() {
    let timeout = Duration::from_secs(1);
    // The head's deadline, 1 s; half a second more for a loaded machine. A deadline that
    // each byte pushed back would close it only at the connection's whole life (11 s here).
    let margin = Duration::from_millis(500);
    let server = Server::start(&["--handshake-timeout", "1", "--write-timeout", "10"]);
    let opened = Instant::now();
    let mut socket = TcpStream::connect(server.http).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // A head that never ends: the request line, then one header's value for ever.
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Trickle: ";
    let mut next = head.iter().copied().chain(std::iter::repeat(b't'));
    let mut answer = Vec::new();
    let closed = loop {
        assert!(
            opened.elapsed() < timeout + margin,
            "still open after {:?}",
            opened.elapsed()
        );
        // The pace of the trickle: a byte, then 100 ms of listening.
        let _ = socket.write_all(&[next.next().unwrap()]);
        let mut chunk = [0u8; 1024];
        match socket.read(&mut chunk) {
            Ok(0) => break opened.elapsed(),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break opened.elapsed(), // a reset: closed all the same
        }
    };
    assert!(
        answer.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        (timeout..timeout + margin).contains(&closed),
        "closed after {closed:?}"
    );
}

/// A page request on its own connection from `from` that names `forwarded` in
/// X-Forwarded-For, answered and kept alive: it holds a place for its address (3 s idle).
fn kept_alive_page_request(from: IpAddr, to: std::net::SocketAddr, forwarded: &str) -> TcpStream {
    let mut socket = connect_from(from, to);
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let request =
        format!("HEAD /config.js HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {forwarded}\r\n\r\n");
    socket.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).expect("an answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    socket
}

/// The status of a page request from `from` that names `forwarded` in X-Forwarded-For.
fn page_status_forwarded(from: IpAddr, to: std::net::SocketAddr, forwarded: &str) -> u16 {
    let request = format!(
        "GET /config.js HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {forwarded}\r\n\
         Connection: close\r\n\r\n"
    );
    http_over(connect_from(from, to), &request).0
}

/// README: on the page port the address counted is the peer's, or with --trust-proxy the
/// last X-Forwarded-For entry. Without the flag the header is anyone's to send, and counts
/// for nothing; with it, the proxy's own address counts for nothing.
#[test]
fn on_the_page_port_x_forwarded_for_is_counted_only_behind_a_trusted_proxy() {
    let (proxy, elsewhere) = (loopback(1), loopback(2));
    let forwarded = "203.0.113.7";

    let server = Server::start(&["--max-clients-per-address", "2"]);
    let _held: Vec<TcpStream> = (0..2)
        .map(|_| kept_alive_page_request(proxy, server.http, forwarded))
        .collect();
    assert_eq!(
        page_status_forwarded(proxy, server.http, "198.51.100.9"),
        429,
        "without --trust-proxy the peer's share is spent, whatever the header says"
    );
    assert_eq!(
        page_status_forwarded(elsewhere, server.http, forwarded),
        200,
        "without --trust-proxy the forwarded address holds nothing"
    );

    let server = Server::start(&["--trust-proxy", "--max-clients-per-address", "2"]);
    let _held: Vec<TcpStream> = (0..2)
        .map(|_| kept_alive_page_request(proxy, server.http, forwarded))
        .collect();
    assert_eq!(
        page_status_forwarded(proxy, server.http, forwarded),
        429,
        "with --trust-proxy the forwarded address's share is spent"
    );
    assert_eq!(
        page_status_forwarded(proxy, server.http, "198.51.100.9"),
        200,
        "with --trust-proxy the proxy's own address holds nothing"
    );
}
