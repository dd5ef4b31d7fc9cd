//! One script must not stop the server. A session that drops without a close keeps its name
//! for the resume window, so it also keeps its client's seat: sessions count against the
//! address's share and `--max-clients` exactly as connections do, the room never runs out of
//! names, and it keeps answering newcomers and passing lines while a script opens and drops
//! sessions as fast as it can.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Sessions each storm tries to leave behind.
const ATTEMPTS: usize = 100_000;
/// Threads the storm runs on.
const STORM_THREADS: usize = 8;
/// A short window, so that every session's leave comes within the test.
const WINDOW: Duration = Duration::from_secs(4);
const MAX_CLIENTS: usize = 4000;
const PER_ADDRESS: usize = 500;
/// The README's promise: a newcomer is answered (its join, or a refusal) within 1 s, and a
/// line comes back within 1 s; the margin is for a debug build sharing two cores with the
/// storm.
const ANSWERED_WITHIN: Duration = Duration::from_secs(2);
/// How often the room looks for sessions whose window has ended: each leave is announced
/// at most this long after its window ends.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// What a debug build sharing two cores with the storm may add to a promised time.
const MARGIN: Duration = Duration::from_secs(1);

/// How one attempt ended.
enum Attempt {
    /// It got a session and its join line.
    Joined,
    /// It was refused: HTTP 429 or 503, or close 1013.
    Refused,
    /// Nothing it could read within the patience.
    Stalled(String),
}

/// The handshake of the resume dialect, then its first message, `new`, as soon as the
/// server's answer is in; reads until its own join line or a refusal, then resets the
/// connection (SO_LINGER 0), as a script that leaves a detached session behind does.
fn leave_a_session_behind(from: IpAddr, to: SocketAddr) -> Attempt {
    let mut socket = connect_from(from, to);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: threadchat-resume\r\n\r\n"
    );
    let mask = [7u8, 1, 2, 3];
    let mut new = vec![0x81, 0x80 | 3];
    new.extend(mask);
    new.extend(b"new".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let outcome = (|| {
        if let Err(e) = socket.write_all(request.as_bytes()) {
            return Attempt::Stalled(format!("write: {e}"));
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut said_new = false;
        loop {
            if got.starts_with(b"HTTP/1.1 429") || got.starts_with(b"HTTP/1.1 503") {
                return Attempt::Refused;
            }
            if find(&got, b" has joined.").is_some() {
                return Attempt::Joined;
            }
            if let Some(end) = find(&got, b"\r\n\r\n") {
                if !said_new && got.starts_with(b"HTTP/1.1 101") {
                    if let Err(e) = socket.write_all(&new) {
                        return Attempt::Stalled(format!("write: {e}"));
                    }
                    said_new = true;
                }
                // After the 101, a close frame (0x88) with 1013.
                let frames = &got[end + 4..];
                if frames.len() >= 4 && frames[0] == 0x88 && frames[2..4] == [0x03, 0xf5] {
                    return Attempt::Refused;
                }
            }
            match socket.read(&mut buf) {
                Ok(0) => {
                    return Attempt::Stalled(String::from_utf8_lossy(&got).into_owned());
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Attempt::Stalled(format!("{e}: {:?}", String::from_utf8_lossy(&got)))
                }
            }
        }
    })();
    reset_on_close(&socket);
    outcome
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What one storm saw.
#[derive(Default)]
struct Storm {
    joined: AtomicUsize,
    refused: AtomicUsize,
    stalled: Mutex<Vec<String>>,
}

/// `ATTEMPTS` sessions left behind from `addresses`, over `STORM_THREADS` threads.
fn storm(to: SocketAddr, addresses: &[IpAddr]) -> Storm {
    let storm = Storm::default();
    let next = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..STORM_THREADS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ATTEMPTS {
                    return;
                }
                match leave_a_session_behind(addresses[i % addresses.len()], to) {
                    Attempt::Joined => storm.joined.fetch_add(1, Ordering::Relaxed),
                    Attempt::Refused => storm.refused.fetch_add(1, Ordering::Relaxed),
                    Attempt::Stalled(what) => {
                        storm.stalled.lock().unwrap().push(what);
                        0
                    }
                };
            });
        }
    });
    storm
}

/// While a storm runs: a newcomer every 100 ms must be answered (join or refusal) in time.
/// Returns the longest wait and how many joined.
fn newcomers_meanwhile(server: &Server, done: &AtomicBool) -> (Duration, usize) {
    let (mut longest, mut joined) = (Duration::ZERO, 0);
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        match handshake(&server.ws_url("/"), &[]) {
            Ok(mut ws) => {
                let answer = read_text(&mut ws);
                assert!(answer.ends_with(" has joined."), "{answer:?}");
                joined += 1;
                let _ = ws.close(None);
                let _ = ws.flush();
            }
            Err(tungstenite::Error::Http(response)) => {
                assert!(
                    [429, 503].contains(&response.status().as_u16()),
                    "{response:?}"
                );
            }
            Err(e) => panic!("a newcomer got neither a join nor a refusal: {e}"),
        }
        longest = longest.max(started.elapsed());
        thread::sleep(Duration::from_millis(100));
    }
    (longest, joined)
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The witness's view of the room: per name, its joins and leaves in order.
#[derive(Default)]
struct RoomView {
    events: HashMap<String, Vec<bool>>,
    held: usize,
    most_held: usize,
}

impl RoomView {
    fn hear(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix(" .... ") else {
            return;
        };
        let (name, joined) = if let Some(name) = rest.strip_suffix(" has joined.") {
            (name, true)
        } else if let Some(name) = rest.strip_suffix(" has left.") {
            (name, false)
        } else {
            return;
        };
        self.events.entry(name.to_owned()).or_default().push(joined);
        if joined {
            self.held += 1;
            self.most_held = self.most_held.max(self.held);
        } else {
            self.held = self.held.saturating_sub(1);
        }
    }

    /// Every name but `staying` joined and left in turn, each join answered by exactly one
    /// leave.
    fn each_leave_announced_once(&self, staying: &str) {
        for (name, events) in self.events.iter().filter(|(name, _)| *name != staying) {
            let alternates = events.iter().enumerate().all(|(i, &j)| j == (i % 2 == 0));
            assert!(
                alternates && events.len() % 2 == 0,
                "{name}: joins and leaves out of turn: {events:?}"
            );
        }
    }
}

/// The witness says a line every 100 ms and reads until it comes back, hearing everything
/// in between; returns its view and the longest a line of its took to come back.
fn witness_meanwhile(witness: &mut Client, done: &AtomicBool, view: &mut RoomView) -> Duration {
    let mut longest = Duration::ZERO;
    let mut n = 0;
    while !done.load(Ordering::Relaxed) {
        n += 1;
        let said = format!("tick {n}");
        let started = Instant::now();
        witness.say(&said);
        let mine = format!("{}: {said}", witness.nickname);
        for line in witness.until(&mine) {
            view.hear(&line);
        }
        longest = longest.max(started.elapsed());
        thread::sleep(Duration::from_millis(100));
    }
    longest
}

/// Runs a storm of sessions left behind and checks what it may not do: stall anyone, hold
/// more than `bound`, or keep a name past its window. Returns once every session has ended.
fn run_storm(server: &Server, addresses: &[IpAddr], bound: usize) -> Resident {
    let mut witness = server.join();
    let mut view = RoomView::default();
    let done = AtomicBool::new(false);
    let before = resident_bytes(server.pid());
    let started = Instant::now();
    let (storm, (newcomer_wait, _), line_wait) = thread::scope(|scope| {
        let newcomers = scope.spawn(|| newcomers_meanwhile(server, &done));
        let witnessing = scope.spawn(|| witness_meanwhile(&mut witness, &done, &mut view));
        let storm = storm(server.ws, addresses);
        done.store(true, Ordering::Relaxed);
        (storm, newcomers.join().unwrap(), witnessing.join().unwrap())
    });
    // Every session was left behind by now, so every window ends within WINDOW of this.
    let stormed = Instant::now();
    let peak = resident_bytes(server.pid());
    let took = started.elapsed();
    let joined = storm.joined.load(Ordering::Relaxed);
    let refused = storm.refused.load(Ordering::Relaxed);
    let stalled = storm.stalled.lock().unwrap();
    eprintln!(
        "{} addresses: {joined} sessions, {refused} refused in {took:.1?}; newcomers answered \
         within {newcomer_wait:?}, lines back within {line_wait:?}; at most {} held; \
         RSS {} -> {} KiB",
        addresses.len(),
        view.most_held,
        before / 1024,
        peak / 1024
    );
    assert!(
        stalled.is_empty(),
        "{} stalled: {:?}",
        stalled.len(),
        &stalled[..stalled.len().min(3)]
    );
    assert_eq!(joined + refused, ATTEMPTS);
    assert!(joined > 0 && refused > 0);
    assert!(
        newcomer_wait <= ANSWERED_WITHIN,
        "a newcomer waited {newcomer_wait:?}"
    );
    assert!(line_wait <= ANSWERED_WITHIN, "a line took {line_wait:?}");
    // The witness and the newcomers are held too; the storm's addresses get the rest.
    assert!(view.most_held <= bound, "{} held at once", view.most_held);

    // Every session ends with its window, announced once.
    let deadline = stormed + WINDOW + EXPIRY_CHECK + MARGIN;
    let left_everyone = |view: &RoomView| view.held == 0;
    while !left_everyone(&view) {
        assert!(Instant::now() < deadline, "{} still held", view.held);
        let Some(line) = line_by(&mut witness, deadline) else {
            continue;
        };
        view.hear(&line);
    }
    view.each_leave_announced_once(&witness.nickname);
    let sessions_joined: usize = view
        .events
        .values()
        .map(|e| e.iter().filter(|&&j| j).count())
        .sum();
    assert!(
        sessions_joined >= joined,
        "{sessions_joined} joins heard, {joined} made"
    );

    Resident { before, peak }
}

/// RSS before a storm and at its end.
struct Resident {
    before: u64,
    peak: u64,
}

/// Waits until RSS is at most `bound` (it falls as the room gives memory back after the
/// leaves), within the patience.
fn resident_falls_to(server: &Server, bound: u64, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while resident_bytes(server.pid()) > bound {
        assert!(
            Instant::now() < deadline,
            "RSS {} KiB after the sessions ended; {what}: {} KiB",
            resident_bytes(server.pid()) / 1024,
            bound / 1024
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// RSS once it has stopped falling: unchanged for a second and a half, longer than the
/// room's pulse, which gives free heap back every second.
fn resident_settled(server: &Server) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    let mut low = resident_bytes(server.pid());
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(1500) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        let now = resident_bytes(server.pid());
        if now < low {
            (low, since) = (now, Instant::now());
        }
    }
    low
}

fn server() -> Server {
    raise_own_open_file_limit();
    let window = WINDOW.as_secs().to_string();
    Server::start(&[
        "--resume-window",
        &window,
        "--max-clients",
        &MAX_CLIENTS.to_string(),
        "--max-clients-per-address",
        &PER_ADDRESS.to_string(),
    ])
}

#[test]
fn a_hundred_thousand_sessions_left_behind_from_one_address_hold_its_share_alone() {
    let server = server();
    let one = [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))];
    // The address's share, plus the witness and a newcomer from 127.0.0.1.
    let storm = run_storm(&server, &one, PER_ADDRESS + 2);
    // Memory comes back once they are gone: the heap and log segments they held, within
    // 2 MiB of where it started (anonymous memory; the binary's code pages the storm touched
    // are the file's, shared and clean).
    let back = storm.before + 2 * 1024 * 1024;
    resident_falls_to(&server, back, "where it started + 2 MiB");
}

#[test]
fn a_hundred_thousand_sessions_left_behind_from_a_hundred_addresses_hold_the_server_s_bound() {
    let server = server();
    let many: Vec<IpAddr> = (1..=100)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)))
        .collect();
    let first = run_storm(&server, &many, MAX_CLIENTS);
    // Memory comes back once they are gone, but not all of it: glibc gives back only whole
    // free pages, and the few allocations still live after the storm lie scattered through a
    // heap that held thousands of places (measured: 0.4 MB live in 3.6 MB; 2 to 4 MB stay,
    // more on a busier machine). What stays is bounded by that heap's high-water mark, which
    // --max-clients bounds, not by how many sessions came and went: a second storm leaves
    // no more behind than the first (within 2 MiB), and what stays is never the peak.
    let after_first = resident_settled(&server);
    assert!(
        after_first < first.peak,
        "RSS {} KiB after the sessions ended, as at the storm's end",
        after_first / 1024
    );
    let second = run_storm(&server, &many, MAX_CLIENTS);
    let back = after_first.max(second.before) + 2 * 1024 * 1024;
    resident_falls_to(&server, back, "what the first storm left + 2 MiB");
}
