//! A restart of one instance of a cluster, as its clients live it: every client of instance
//! A is told 1012 (service restart) at once and comes back on instance B. Resumable clients
//! resume their sessions; plain ones join again, as everyone did before sessions existed,
//! and their leaves and joins go to everyone. Each client is a thread, as a browser tab is;
//! the reconnects go `STORM_HANDSHAKES_IN_FLIGHT` at a time in both runs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::conn;
use crate::probe::{self, Server};

const PROTOCOL: &str = "threadchat-resume";
/// A client thread needs little: a frame buffer and a few strings.
const CLIENT_STACK_BYTES: usize = 128 * 1024;
/// Longest any one client may take to be back.
const BACK_WITHIN: Duration = Duration::from_secs(60);

/// What one restart measured.
pub struct Restart {
    /// From SIGTERM to the last client back (resumed, or its own join heard).
    pub all_back: Duration,
    /// Instance B's CPU over that time, per client back.
    pub server_us_each: f64,
    /// Redis's CPU over that time, per client back.
    pub redis_us_each: f64,
    /// Clients that did not come back as they should (a resume refused, a timeout).
    pub failed: usize,
    /// Resumable clients: leave and join lines among the lines they missed.
    pub leaves_and_joins: usize,
}

/// Handshakes under way at once: a counting semaphore.
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Gate {
    fn new(slots: usize) -> Gate {
        Gate {
            free: Mutex::new(slots),
            freed: Condvar::new(),
        }
    }

    fn pass<T>(&self, work: impl FnOnce() -> T) -> T {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        drop(free);
        let done = work();
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.freed.notify_one();
        done
    }
}

/// One client's connection: the socket and the bytes read but not yet taken as frames.
struct Line {
    stream: TcpStream,
    inbuf: Vec<u8>,
}

impl Line {
    fn open(server: &Server, source: u8, resumable: bool) -> Option<Line> {
        let protocol = resumable.then_some(PROTOCOL);
        let (stream, early) = conn::connect_asking(server.ws, source, protocol).ok()?;
        stream.set_read_timeout(Some(BACK_WITHIN)).ok()?;
        Some(Line {
            stream,
            inbuf: early,
        })
    }

    fn say(&mut self, text: &str) -> Option<()> {
        let mut frame = Vec::new();
        conn::client_frame(0x1, text.as_bytes(), &mut frame);
        self.stream.write_all(&frame).ok()
    }

    /// The next text message; `None` once the server has closed.
    fn text(&mut self) -> Option<String> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((opcode, range)) = conn::next_frame(&self.inbuf) {
                let payload = self.inbuf[range.clone()].to_vec();
                self.inbuf.drain(..range.end);
                match opcode {
                    0x1 => return String::from_utf8(payload).ok(),
                    0x8 => return None,
                    _ => continue,
                }
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A client as the restart finds it: its line, and for a resumable one its token and the
/// position of the last line it got.
struct Joined {
    line: Line,
    nickname: String,
    token: Option<String>,
    position: String,
}

/// Joins on `server`: `new` and the token first for a resumable client, then its own join.
fn join(server: &Server, source: u8, resumable: bool) -> Option<Joined> {
    let mut line = Line::open(server, source, resumable)?;
    let mut token = None;
    if resumable {
        line.say("new")?;
        token = Some(line.text()?.strip_prefix("session ")?.to_owned());
    }
    let first = line.text()?;
    let (position, join) = split(&first, resumable);
    let nickname = join
        .strip_prefix(" .... ")?
        .strip_suffix(" has joined.")?
        .to_owned();
    Some(Joined {
        line,
        nickname,
        token,
        position,
    })
}

/// A line of the resume dialect is `<position> <line>`; a plain one has no position.
fn split(text: &str, resumable: bool) -> (String, String) {
    match text.split_once(' ').filter(|_| resumable) {
        Some((at, line)) => (at.to_owned(), line.to_owned()),
        None => (String::new(), text.to_owned()),
    }
}

fn is_leave_or_join(line: &str) -> bool {
    line.starts_with(" .... ") && (line.ends_with(" has left.") || line.ends_with(" has joined."))
}

/// Two instances sharing `redis`; `clients` join the first, hear everything up to a marker,
/// and then the first gets SIGTERM. Measured until every client is back on the second.
pub fn restart(
    binary: &str,
    redis: &probe::Redis,
    clients: usize,
    resumable: bool,
    in_flight: usize,
) -> Restart {
    redis.flush();
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let args = ["--ping-interval", "0", "--redis", &url];
    let (first, second) = (
        Server::start(binary, &args),
        Arc::new(Server::start(binary, &args)),
    );
    let gate = Gate::new(in_flight);
    let joined: Vec<Joined> = std::thread::scope(|s| {
        let connectors: Vec<_> = (0..in_flight)
            .map(|t| {
                let (first, gate) = (&first, &gate);
                s.spawn(move || {
                    (t..clients)
                        .step_by(in_flight)
                        .map(|i| {
                            let source = 2 + (i % 250) as u8;
                            gate.pass(|| join(first, source, resumable))
                                .expect("a client could not join")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        connectors
            .into_iter()
            .flat_map(|c| c.join().expect("a connector"))
            .collect()
    });
    let marker = format!("{}: everyone is here", joined[0].nickname);
    let ready = Arc::new(Barrier::new(clients + 1));
    let back = Arc::new(Barrier::new(clients + 1));
    let gate = Arc::new(gate);
    let threads: Vec<_> = joined
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let (ready, back, gate, second) =
                (ready.clone(), back.clone(), gate.clone(), second.clone());
            let marker = marker.clone();
            std::thread::Builder::new()
                .stack_size(CLIENT_STACK_BYTES)
                .spawn(move || {
                    if i == 0 {
                        client.line.say("everyone is here");
                    }
                    // Everything up to the marker: up to date, as a page is.
                    while let Some(text) = client.line.text() {
                        let (at, line) = split(&text, resumable);
                        client.position = at;
                        if line == marker {
                            break;
                        }
                    }
                    ready.wait();
                    while client.line.text().is_some() {} // until the 1012
                    let source = 2 + (i % 250) as u8;
                    let outcome = gate.pass(|| come_back(&second, source, &client));
                    let done = Instant::now();
                    back.wait(); // hold the connection until everyone is back
                    (done, outcome)
                })
                .expect("a client thread")
        })
        .collect();
    ready.wait();
    let (cpu, redis_cpu) = (second.cpu(), redis.cpu());
    let stopped = Instant::now();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(first.pid() as i32, libc::SIGTERM) };
    back.wait();
    let (cpu, redis_cpu) = (second.cpu() - cpu, redis.cpu() - redis_cpu);
    let outcomes: Vec<(Instant, Option<usize>)> = threads
        .into_iter()
        .map(|t| t.join().expect("a client"))
        .collect();
    let last = outcomes.iter().map(|(t, _)| *t).max().unwrap_or(stopped);
    let each = |d: Duration| d.as_secs_f64() * 1e6 / clients as f64;
    Restart {
        all_back: last - stopped,
        server_us_each: each(cpu),
        redis_us_each: each(redis_cpu),
        failed: outcomes.iter().filter(|(_, o)| o.is_none()).count(),
        leaves_and_joins: outcomes.iter().filter_map(|(_, o)| *o).sum(),
    }
}

/// Comes back on `server`: resumes, or joins again. Returns how many leave and join lines
/// were among the lines it missed, or `None` if it did not come back as it should.
fn come_back(server: &Server, source: u8, client: &Joined) -> Option<usize> {
    let mut line = Line::open(server, source, client.token.is_some())?;
    match &client.token {
        Some(token) => {
            line.say(&format!("resume {token} {}", client.position))?;
            let first = line.text()?;
            let missed: usize = first.strip_prefix("resumed ")?.parse().ok()?;
            let heard = (0..missed)
                .map(|_| line.text().map(|t| is_leave_or_join(&split(&t, true).1)))
                .collect::<Option<Vec<bool>>>()?;
            Some(heard.into_iter().filter(|l| *l).count())
        }
        None => {
            // A newcomer's first line is its own join: it hears nothing from before it.
            let first = line.text()?;
            first.ends_with(" has joined.").then_some(0)
        }
    }
}
