//! The write path from the outside: a client that stops reading, and a join storm of
//! clients that read late. One client's state must never cost another a line, and being
//! slow is measured in bytes behind the room, not in lines queued.

mod common;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The lag limit the tests run with: small, so that little traffic crosses it.
const MAX_LAG_BYTES: usize = 1 << 20;
const LINE_BYTES: usize = 1000;

/// At most this many lines unread by the sender or any reader: far under the lag limit.
const WINDOW_LINES: usize = (256 * 1024) / LINE_BYTES;

/// Sends `count` lines `"{tag} {i} zzz…"` from `sender`, never more than [`WINDOW_LINES`]
/// ahead of its own echoes or of any reader's progress; returns every other line the sender
/// read, with the number of its own lines it had read before it.
fn send_lines(
    sender: &mut Client,
    tag: &str,
    count: usize,
    readers: &[Arc<AtomicUsize>],
) -> Vec<(usize, String)> {
    let pad = "z".repeat(LINE_BYTES);
    let own = format!("{}: {tag} ", sender.nickname);
    let slowest = || readers.iter().map(|r| r.load(Ordering::Acquire)).min();
    let (mut sent, mut echoed, mut others) = (0, 0, Vec::new());
    while echoed < count {
        let limit = echoed.min(slowest().unwrap_or(count)) + WINDOW_LINES;
        while sent < count && sent < limit {
            sender.say(&format!("{tag} {sent} {pad}"));
            sent += 1;
        }
        if echoed == sent {
            eventually("the readers to catch up", || {
                slowest().unwrap_or(count) + WINDOW_LINES > sent
            });
            continue;
        }
        let line = sender.line();
        if line.starts_with(&own) {
            echoed += 1;
        } else {
            others.push((echoed, line));
        }
    }
    others
}

/// A reader that checks it gets `count` lines of `tag` from `from`, in order, and counts
/// them in `progress`. Notices (someone left) may come between them.
fn expect_lines(
    mut reader: Client,
    from: String,
    tag: &'static str,
    count: usize,
    progress: Arc<AtomicUsize>,
) -> Client {
    progress.store(0, Ordering::Release);
    let mut i = 0;
    while i < count {
        let line = reader.line();
        if line.starts_with(" .... ") {
            continue;
        }
        let prefix = format!("{from}: {tag} {i} ");
        assert!(
            line.starts_with(&prefix),
            "wanted {prefix:?}, got {line:.60?}"
        );
        i += 1;
        progress.store(i, Ordering::Release);
    }
    reader
}

/// Starts a thread per reader running [`expect_lines`].
fn reading(
    readers: Vec<Client>,
    from: &str,
    tag: &'static str,
    count: usize,
) -> (Vec<thread::JoinHandle<Client>>, Vec<Arc<AtomicUsize>>) {
    let progress: Vec<Arc<AtomicUsize>> = readers.iter().map(|_| Arc::default()).collect();
    let threads = readers
        .into_iter()
        .zip(&progress)
        .map(|(r, p)| {
            let (from, p) = (from.to_owned(), p.clone());
            thread::spawn(move || expect_lines(r, from, tag, count, p))
        })
        .collect();
    (threads, progress)
}

#[test]
fn a_client_that_stops_reading_delays_nobody_and_is_evicted_only_when_far_behind() {
    let lag = MAX_LAG_BYTES.to_string();
    let server = Server::start(&["--rate-limit", "0", "--max-lag-bytes", &lag]);
    let mut clients: Vec<Client> = (0..4).map(|_| server.join()).collect();
    settle(&mut clients);
    let stalled = clients.pop().expect("four clients");
    let readers = clients.split_off(1);
    let mut sender = clients.pop().expect("four clients");

    // Half the lag limit: the stalled client is behind, but not too far.
    let first = MAX_LAG_BYTES / 2 / LINE_BYTES;
    let (threads, progress) = reading(readers, &sender.nickname, "a", first);
    let others = send_lines(&mut sender, "a", first, &progress);
    assert!(others.is_empty(), "nobody left: {others:?}");
    let readers: Vec<Client> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // It catches up, and it was never dropped.
    let name = sender.nickname.clone();
    let mut stalled = expect_lines(stalled, name, "a", first, Arc::default());

    // Now it stops for good while far more than the limit goes by.
    let second = 12 * MAX_LAG_BYTES / LINE_BYTES;
    let (threads, progress) = reading(readers, &sender.nickname, "b", second);
    let others = send_lines(&mut sender, "b", second, &progress);
    for reader in threads {
        reader.join().expect("a reader lost or reordered a line");
    }
    let left = format!(" .... {} has left.", stalled.nickname);
    let announced: Vec<_> = others.iter().filter(|(_, l)| *l == left).collect();
    assert_eq!(
        announced.len(),
        1,
        "the stalled client left once: {others:?}"
    );
    let lines_before = announced[0].0;
    assert!(
        lines_before * LINE_BYTES >= MAX_LAG_BYTES,
        "evicted after only {lines_before} lines, less than the lag limit"
    );
    assert_eq!(stalled.close_frame(), (1008, "too slow".to_owned()));
}

/// One storm client: a raw socket with a small receive buffer, read only now and then.
struct Late {
    socket: TcpStream,
    bytes: Vec<u8>,
    lines: Vec<String>,
    closed: bool,
}

impl Late {
    /// Reads whatever has arrived, without waiting.
    fn read_now(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.socket.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => self.bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
        while self.bytes.len() >= 2 {
            let (header, len) = match self.bytes[1] & 0x7f {
                126 if self.bytes.len() >= 4 => (
                    4,
                    usize::from(u16::from_be_bytes([self.bytes[2], self.bytes[3]])),
                ),
                126 => return,
                n => (2, usize::from(n)),
            };
            if self.bytes.len() < header + len {
                return;
            }
            match self.bytes[0] & 0x0f {
                0x1 => self
                    .lines
                    .push(String::from_utf8_lossy(&self.bytes[header..header + len]).into_owned()),
                0x8 => self.closed = true,
                _ => {}
            }
            self.bytes.drain(..header + len);
        }
    }
}

fn shrink_receive_buffer(socket: &TcpStream) {
    let size: libc::c_int = 4096;
    // SAFETY: a live local of the type the option expects.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[test]
fn a_storm_of_late_readers_all_stay_and_see_every_join_in_one_order() {
    const STORM: usize = 1000;
    const CONNECTORS: usize = 25;
    raise_own_open_file_limit();
    // All from one address, more than its default share.
    let server = Server::start(&["--rate-limit", "0", "--max-clients-per-address", "0"]);
    let mut witness = server.join();

    // Everyone at once, as after a restart.
    let connecting: Vec<_> = (0..CONNECTORS)
        .map(|_| {
            let addr = server.ws;
            thread::spawn(move || {
                (0..STORM / CONNECTORS)
                    .map(|_| {
                        let raw = RawClient::connect(addr);
                        shrink_receive_buffer(&raw.socket);
                        raw.socket.set_nonblocking(true).unwrap();
                        Late {
                            socket: raw.socket,
                            bytes: Vec::new(),
                            lines: Vec::new(),
                            closed: false,
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();

    // The witness reads promptly; once it has heard every join, its marker line follows
    // them all in the room's one order.
    let mut joins = Vec::new();
    while joins.len() < STORM {
        let line = witness.line();
        let name = line
            .strip_prefix(" .... ")
            .and_then(|l| l.strip_suffix(" has joined."));
        joins.push(
            name.unwrap_or_else(|| panic!("unexpected {line:?}"))
                .to_owned(),
        );
    }
    let mut storm: Vec<Late> = connecting
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let marker = format!("{}: settled", witness.nickname);
    witness.say("settled");

    // Each client reads every 200 to 500 ms until it has the marker.
    let deadline = Instant::now() + 6 * PATIENCE;
    let mut next_read: Vec<Instant> = storm.iter().map(|_| Instant::now()).collect();
    loop {
        let now = Instant::now();
        assert!(now < deadline, "the storm did not settle in time");
        for (client, at) in storm.iter_mut().zip(next_read.iter_mut()) {
            if *at <= now && client.lines.last() != Some(&marker) {
                client.read_now();
                assert!(!client.closed, "a late reader was closed");
                *at = now + Duration::from_millis(rand::random_range(200..500));
            }
        }
        if storm.iter().all(|c| c.lines.last() == Some(&marker)) {
            break;
        }
        let soonest = next_read.iter().min().copied().unwrap_or(now);
        // Reading late is the point: the clients sleep until their next read.
        thread::sleep(soonest.saturating_duration_since(Instant::now()));
    }

    for client in &storm {
        let heard: Vec<&str> = client.lines[..client.lines.len() - 1]
            .iter()
            .map(|l| {
                l.strip_prefix(" .... ")
                    .and_then(|l| l.strip_suffix(" has joined."))
                    .unwrap_or_else(|| panic!("a late reader heard {l:?}"))
            })
            .collect();
        let own = heard[0];
        let from = joins.iter().position(|j| j == own).expect("its own join");
        assert_eq!(heard, joins[from..], "joins in another order");
    }
}
