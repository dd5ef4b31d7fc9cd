//! The fanout scenarios again, with one OS thread per client, each blocked in a read.
//!
//! The event loop serves every client from one thread, and its late readers read up to
//! `LATE_READ` after data arrives. Browsers are not like that: each is a process of its
//! own that wakes as soon as its socket has data. Here every delivery wakes a thread of
//! its own, and those wakeups compete with the server's threads for the same cores, as
//! they would on a real machine. That shows what the event loop hides, for instance a
//! server that rests its writer threads between passes: small rooms then wait.
//!
//! Clients join through the event loop, then each gets a thread; senders are threads
//! of their own that write to their client's socket.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::probe::{self, Kind};
use crate::{conn, said, Fanout, Heard, Load, Pace, Shape, Sums, Target, Timed};
use crate::{DRAIN_FOR, WINDOW_PER_SENDER};

/// Each client thread needs little stack: its buffers are on the heap.
const STACK: usize = 64 * 1024;

/// What the client threads share.
struct Room {
    epoch: Instant,
    kind: Kind,
    clients: usize,
    delivered: AtomicU64,
    senders: Vec<Sender>,
}

/// A sending client's lines not yet heard by its witness, and the thread to wake when
/// one is.
#[derive(Default)]
struct Sender {
    in_flight: AtomicU32,
    thread: OnceLock<Thread>,
}

/// One fanout run against `target`, a thread per client; `shape.late` and
/// `shape.stalled` do not apply. Only the figures `Fanout::measured` gives are filled.
pub fn fanout(target: Target, shape: Shape) -> Fanout {
    let servers = target.start();
    let [server] = servers.as_slice() else {
        panic!("a thread per client drives one server");
    };
    let mut load = Load::new(server.kind, false);
    load.join(server, shape.clients, true);
    let expected_per_line = load.recipients();
    let room = Arc::new(Room {
        epoch: Instant::now(),
        kind: server.kind,
        clients: shape.clients,
        delivered: AtomicU64::new(0),
        senders: (0..shape.senders).map(|_| Sender::default()).collect(),
    });
    let streams = load.into_streams();
    let handles: Vec<TcpStream> = streams
        .iter()
        .map(|(s, _)| s.try_clone().expect("a second handle"))
        .collect();
    let readers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, (stream, early))| {
            let room = Arc::clone(&room);
            spawn(move || read(i, stream, early, &room))
        })
        .collect();

    let cpu_before = server.cpu();
    let own_before = probe::cpu_of("/proc/self/stat");
    let started = Instant::now();
    let senders: Vec<_> = (0..shape.senders)
        .map(|s| {
            let stream = handles[s].try_clone().expect("a second handle");
            let room = Arc::clone(&room);
            spawn(move || send(s, stream, started, shape, &room))
        })
        .collect();
    let sent: u64 = senders
        .into_iter()
        .map(|t| t.join().expect("a sender"))
        .sum();
    let expected = sent * expected_per_line;
    let deadline = Instant::now() + DRAIN_FOR;
    while room.delivered.load(Relaxed) < expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    let server_cpu = server.cpu() - cpu_before;
    let own_cpu = probe::cpu_of("/proc/self/stat") - own_before;

    // Ends every blocked read.
    for handle in &handles {
        let _ = handle.shutdown(Shutdown::Both);
    }
    let mut heard = Vec::with_capacity(readers.len());
    let mut latencies = Vec::new();
    for reader in readers {
        let (h, l) = reader.join().expect("a reader");
        heard.push(h);
        latencies.extend(l);
    }
    let sums = Sums {
        expected,
        delivered: room.delivered.load(Relaxed),
        elapsed,
        server_cpu,
        own_cpu,
    };
    Fanout::measured(heard.into_iter(), latencies, sums)
}

fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("a client thread")
}

/// Client `i`: blocked in a read until data comes, then times each line in it against
/// the moment the read returned. Returns what it heard and every latency (us).
fn read(i: usize, mut stream: TcpStream, mut inbuf: Vec<u8>, room: &Room) -> (Heard, Vec<u32>) {
    let mut heard = Heard::default();
    let mut latencies = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let now_us = room.epoch.elapsed().as_micros() as u64;
        inbuf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        let mut lines = 0;
        while let Some((opcode, range)) = conn::next_frame(&inbuf[used..]) {
            let payload = &inbuf[used + range.start..used + range.end];
            used += range.end;
            if opcode != 0x1 {
                continue;
            }
            let text = String::from_utf8_lossy(payload);
            let Some(line) = Timed::parse(said(&text, room.kind)) else {
                continue;
            };
            heard.add(line.id);
            latencies.push(now_us.saturating_sub(line.sent_us) as u32);
            lines += 1;
            // The next client is the sender's witness: the peer sends nobody their own
            // lines.
            if i == (line.sender + 1) % room.clients {
                let sender = &room.senders[line.sender];
                sender.in_flight.fetch_sub(1, Relaxed);
                if let Some(thread) = sender.thread.get() {
                    thread.unpark();
                }
            }
        }
        inbuf.drain(..used);
        room.delivered.fetch_add(lines, Relaxed);
    }
    (heard, latencies)
}

/// Sending client `s`: writes lines `s`, `s + senders`, `s + 2 senders`, ... for
/// `shape.send_for`. Paced, the senders take turns at the aggregate rate, as the event
/// loop's do; at full speed each keeps `WINDOW_PER_SENDER` lines unheard by its witness.
/// Returns how many it sent.
fn send(s: usize, mut stream: TcpStream, started: Instant, shape: Shape, room: &Room) -> u64 {
    let me = &room.senders[s];
    me.thread
        .set(thread::current())
        .expect("one thread per sender");
    let padding = "p".repeat(shape.padding);
    let stop = started + shape.send_for;
    let mut frame = Vec::new();
    let mut sent = 0u64;
    let mut write = |sent: &mut u64| {
        let line = Timed {
            id: *sent * shape.senders as u64 + s as u64,
            sender: s,
            sent_us: room.epoch.elapsed().as_micros() as u64,
        };
        // Counted before it can be heard.
        me.in_flight.fetch_add(1, Relaxed);
        frame.clear();
        conn::client_frame(0x1, line.text(&padding).as_bytes(), &mut frame);
        *sent += 1;
        stream.write_all(&frame)
    };
    match shape.pace {
        Pace::Steady(rate) => {
            let gap = Duration::from_nanos(1_000_000_000 / rate);
            let mut next = started + gap * s as u32;
            while next < stop {
                thread::sleep(next.saturating_duration_since(Instant::now()));
                if write(&mut sent).is_err() {
                    break;
                }
                next += gap * shape.senders as u32;
            }
        }
        Pace::AsFastAsItGoes => {
            while Instant::now() < stop {
                while me.in_flight.load(Relaxed) < WINDOW_PER_SENDER {
                    if write(&mut sent).is_err() {
                        return sent;
                    }
                }
                thread::park_timeout(Duration::from_millis(1));
            }
        }
    }
    sent
}
