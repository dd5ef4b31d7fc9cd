//! `make bench`: how far a thread-per-client chat server goes on a small machine.
//!
//! Starts threadchat as a child process, drives it with up to 10,000 clients from one
//! event-loop thread (so the generator is not the bottleneck), measures the server from
//! the outside, and prints one table. Every scenario is bounded in time and count, and
//! all traffic stays on 127.0.0.x. The `threads` rows drive the fanout scenarios again
//! with one thread per client instead (see `threads`).

mod conn;
mod probe;
mod restart;
mod sessions;
mod threads;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use probe::{Kind, Server};

/// Clients that send in the fanout scenarios.
const SENDERS: usize = 10;
/// A late reader reads this long, at most, after its socket has data: a client busy with
/// something else, as browsers and phones are. Drawn at random for every read.
const LATE_READ: Duration = Duration::from_millis(4);
/// Fixed aggregate rate for the steady fanout runs.
const STEADY_RATE_PER_S: u64 = 200;
/// How long each measured fanout phase sends.
const SEND_FOR: Duration = Duration::from_secs(5);
/// The slow scenario sends longer and bigger lines: the stalled client's kernel buffers
/// (several MB) must fill before its outbox can.
const SLOW_SEND_FOR: Duration = Duration::from_secs(10);
const SLOW_LINE_BYTES: usize = 4096;
/// At full speed, each sender keeps at most this many of its messages unanswered.
const WINDOW_PER_SENDER: u32 = 40;
/// Longest wait for the last deliveries after sending stops.
const DRAIN_FOR: Duration = Duration::from_secs(10);
/// Handshakes under way at once in the storm: what a restart's reconnecting pages bring.
const STORM_HANDSHAKES_IN_FLIGHT: usize = 256;
/// What the generator asks of the open-file limit: 10,000 clients, and the servers it starts
/// enough seats for the most sessions a room holds.
const OPEN_FILES_WANTED: u64 = 1 << 17;
/// Longest wait for all clients to join.
const JOIN_FOR: Duration = Duration::from_secs(90);

struct Client {
    stream: TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    reads: bool,
    open: bool,
    nickname: String,
    joins_seen: u64,
    heard: Heard,
    in_flight: u32,
    /// The latest settle marker this client has heard.
    settled: usize,
    /// A late read is already scheduled for this client.
    read_pending: bool,
}

/// One scenario's clients and what they observed.
struct Load {
    poll: Poll,
    events: Events,
    clients: Vec<Client>,
    epoch: Instant,
    latencies_us: Vec<u32>,
    sent: u64,
    delivered: u64,
    first_receipt: HashMap<u64, u32>,
    /// The most recent join any client heard: the name of a client that never reads.
    last_joined: String,
    watch_leave: Option<String>,
    left_at: Option<Duration>,
    scratch: Vec<u8>,
    next_source: u32,
    kind: Kind,
    /// Late readers: reads wait a random time up to this after data arrives.
    late: Option<Duration>,
    reads_due: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Load {
    fn new(kind: Kind, late: bool) -> Load {
        Load {
            kind,
            late: late.then_some(LATE_READ),
            reads_due: BinaryHeap::new(),
            poll: Poll::new().expect("epoll"),
            events: Events::with_capacity(4096),
            clients: Vec::new(),
            epoch: Instant::now(),
            latencies_us: Vec::new(),
            sent: 0,
            delivered: 0,
            first_receipt: HashMap::new(),
            last_joined: String::new(),
            watch_leave: None,
            left_at: None,
            scratch: vec![0; 256 * 1024],
            next_source: 0,
        }
    }

    /// Connects `count` clients, draining what they receive as it goes, and waits until
    /// every one has heard the last one join.
    fn join(&mut self, server: &Server, count: usize, reads: bool) {
        self.join_across(std::slice::from_ref(server), count, reads);
    }

    /// Connects `count` clients, spread over `servers` in turn, and settles them.
    fn join_across(&mut self, servers: &[Server], count: usize, reads: bool) {
        let start = Instant::now();
        for i in 0..count {
            let source = 2 + (self.next_source % 250) as u8;
            self.next_source += 1;
            let server = &servers[i % servers.len()];
            let (std_stream, early) = conn::connect(server.ws, source).expect("connect");
            self.add(std_stream, early, reads);
            if self.clients.len().is_multiple_of(32) {
                self.turn(Duration::ZERO);
            }
            assert!(start.elapsed() < JOIN_FOR, "joining took too long");
        }
        self.settle(reads);
    }

    /// Takes over a connected client.
    fn add(&mut self, std_stream: std::net::TcpStream, early: Vec<u8>, reads: bool) {
        std_stream.set_nonblocking(true).expect("nonblocking");
        let mut stream = TcpStream::from_std(std_stream);
        let token = Token(self.clients.len());
        let interest = if reads {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::WRITABLE
        };
        self.poll
            .registry()
            .register(&mut stream, token, interest)
            .expect("register");
        self.clients.push(Client {
            stream,
            inbuf: early,
            outbuf: Vec::new(),
            reads,
            open: true,
            nickname: String::new(),
            joins_seen: 0,
            heard: Heard::default(),
            in_flight: 0,
            settled: 0,
            read_pending: false,
        });
        let i = self.clients.len() - 1;
        self.parse(i);
    }

    /// Waits until every reader has heard every join so far.
    fn settle(&mut self, reads: bool) {
        // Clients get their 101 before the room announces them, so joins may be
        // announced in another order than they connected. Wait for each reader's own
        // join (or, for a client that never reads, for the others to hear it), then
        // send a marker: once everyone has it, everyone has heard every join. The peer
        // announces nobody, and does not send client 0 its own marker.
        if self.kind == Kind::Threadchat {
            let heard_before = self.clients[0].joins_seen;
            let announced = self.run_until(JOIN_FOR, |load| {
                if reads {
                    load.clients
                        .iter()
                        .all(|c| !c.reads || !c.nickname.is_empty())
                } else {
                    load.clients[0].joins_seen > heard_before
                }
            });
            assert!(announced, "not every client was announced in time");
        }
        let marker = self.clients.len();
        let text = format!("settle {marker}");
        conn::client_frame(0x1, text.as_bytes(), &mut self.clients[0].outbuf);
        self.flush(0);
        let peer = self.kind == Kind::Peer;
        let settled = self.run_until(JOIN_FOR, |load| {
            load.clients
                .iter()
                .enumerate()
                .all(|(i, c)| !c.reads || c.settled == marker || (peer && i == 0))
        });
        assert!(settled, "the settle marker did not reach every client");
    }

    /// One pass of the event loop: waits up to `timeout` for readiness, then reads and
    /// writes whatever is ready.
    fn turn(&mut self, timeout: Duration) {
        let now = Instant::now();
        let timeout = match self.reads_due.peek() {
            Some(Reverse((at, _))) => timeout.min(at.saturating_duration_since(now)),
            None => timeout,
        };
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
            return;
        }
        let ready: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token().0,
                    e.is_readable() || e.is_read_closed(),
                    e.is_writable(),
                )
            })
            .collect();
        for (i, readable, writable) in ready {
            if readable && self.clients[i].reads {
                match self.late {
                    None => self.read(i),
                    Some(_) if self.clients[i].read_pending => {}
                    Some(most) => {
                        let delay = most.mul_f64(rand_unit());
                        self.clients[i].read_pending = true;
                        self.reads_due.push(Reverse((Instant::now() + delay, i)));
                    }
                }
            }
            if writable {
                self.flush(i);
            }
        }
        let now = Instant::now();
        while let Some(&Reverse((at, i))) = self.reads_due.peek() {
            if at > now {
                break;
            }
            self.reads_due.pop();
            self.clients[i].read_pending = false;
            self.read(i);
        }
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Load) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while !done(self) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.turn((deadline - now).min(Duration::from_millis(50)));
        }
        true
    }

    fn read(&mut self, i: usize) {
        loop {
            let client = &mut self.clients[i];
            match client.stream.read(&mut self.scratch) {
                Ok(0) => {
                    client.open = false;
                    break;
                }
                Ok(n) => {
                    client.inbuf.extend_from_slice(&self.scratch[..n]);
                    self.parse(i);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    client.open = false;
                    break;
                }
            }
        }
    }

    fn parse(&mut self, i: usize) {
        let mut used = 0;
        let now_us = self.epoch.elapsed().as_micros() as u64;
        let mut pong = None;
        while let Some((opcode, range)) = conn::next_frame(&self.clients[i].inbuf[used..]) {
            let start = used + range.start;
            let end = used + range.end;
            match opcode {
                0x1 => {
                    let text = &self.clients[i].inbuf[start..end];
                    self.on_text(i, text.to_vec(), now_us);
                }
                0x8 => self.clients[i].open = false,
                0x9 => pong = Some(self.clients[i].inbuf[start..end].to_vec()),
                _ => {}
            }
            used = end;
        }
        self.clients[i].inbuf.drain(..used);
        if let Some(payload) = pong {
            conn::client_frame(0xA, &payload, &mut self.clients[i].outbuf);
            self.flush(i);
        }
    }

    fn on_text(&mut self, i: usize, text: Vec<u8>, now_us: u64) {
        let text = String::from_utf8_lossy(&text);
        if let Some(notice) = text.strip_prefix(" .... ") {
            let client = &mut self.clients[i];
            if let Some(name) = notice.strip_suffix(" has joined.") {
                if client.nickname.is_empty() {
                    client.nickname = name.to_owned();
                }
                client.joins_seen += 1;
                if self.last_joined != name {
                    self.last_joined = name.to_owned();
                }
            } else if let Some(name) = notice.strip_suffix(" has left.") {
                if self.watch_leave.as_deref() == Some(name) && self.left_at.is_none() {
                    self.left_at = Some(self.epoch.elapsed());
                }
            }
            return;
        }
        let text = said(&text, self.kind);
        if let Some(marker) = text.strip_prefix("settle ") {
            self.clients[i].settled = marker.parse().unwrap_or(0);
            return;
        }
        let Some(Timed {
            id,
            sender,
            sent_us,
        }) = Timed::parse(text)
        else {
            return;
        };
        self.clients[i].heard.add(id);
        // The next client is the sender's witness: the peer sends nobody their own lines.
        if i == (sender + 1) % self.clients.len() {
            let sender = &mut self.clients[sender];
            sender.in_flight = sender.in_flight.saturating_sub(1);
        }
        self.delivered += 1;
        self.latencies_us
            .push(now_us.saturating_sub(sent_us) as u32);
        *self.first_receipt.entry(id).or_insert(0) += 1;
    }

    fn flush(&mut self, i: usize) {
        let client = &mut self.clients[i];
        while !client.outbuf.is_empty() {
            match client.stream.write(&client.outbuf) {
                Ok(n) => {
                    client.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Queues one timestamped message from client `sender`.
    fn send(&mut self, sender: usize, padding: &str) {
        let id = self.sent;
        self.sent += 1;
        let sent_us = self.epoch.elapsed().as_micros() as u64;
        let text = Timed {
            id,
            sender,
            sent_us,
        }
        .text(padding);
        let client = &mut self.clients[sender];
        client.in_flight += 1;
        conn::client_frame(0x1, text.as_bytes(), &mut client.outbuf);
        self.flush(sender);
    }

    fn readers(&self) -> u64 {
        self.clients.iter().filter(|c| c.reads && c.open).count() as u64
    }

    /// How many clients get each line: the peer skips its sender.
    fn recipients(&self) -> u64 {
        match self.kind {
            Kind::Threadchat => self.readers(),
            Kind::Peer => self.readers().saturating_sub(1),
        }
    }

    /// Gives up the clients' connections, blocking again, each with what it has read
    /// and not yet parsed.
    fn into_streams(mut self) -> Vec<(std::net::TcpStream, Vec<u8>)> {
        let registry = self.poll.registry();
        self.clients
            .drain(..)
            .map(|mut c| {
                registry.deregister(&mut c.stream).expect("deregister");
                let stream = std::net::TcpStream::from(c.stream);
                stream.set_nonblocking(false).expect("blocking");
                (stream, c.inbuf)
            })
            .collect()
    }
}

/// What a client said, without the "user-N: " threadchat puts before it; the peer passes
/// the text on as it came.
fn said(text: &str, kind: Kind) -> &str {
    match text.split_once(": ") {
        Some((_, rest)) if kind == Kind::Threadchat => rest,
        _ => text,
    }
}

/// A line that senders time: "b <id> <sender> <sent_us> <padding>", sent_us counted from
/// the run's epoch, so a receiver's latency is its own reading of that clock minus sent_us.
struct Timed {
    id: u64,
    sender: usize,
    sent_us: u64,
}

impl Timed {
    fn text(&self, padding: &str) -> String {
        let Timed {
            id,
            sender,
            sent_us,
        } = self;
        format!("b {id} {sender} {sent_us} {padding}")
    }

    /// The timed line in what a client said, if it is one.
    fn parse(said: &str) -> Option<Timed> {
        let body = said.strip_prefix("b ")?;
        let mut fields = body.split(' ').map(|f| f.parse::<u64>().unwrap_or(0));
        Some(Timed {
            id: fields.next().unwrap_or(0),
            sender: fields.next().unwrap_or(0) as usize,
            sent_us: fields.next().unwrap_or(0),
        })
    }
}

/// The timed lines one client received: how many, and in what order.
#[derive(Clone, Copy, Default, PartialEq)]
struct Heard {
    got: u64,
    /// A hash chain over the ids of received lines: equal chains, equal order.
    order: u64,
}

impl Heard {
    fn add(&mut self, id: u64) {
        self.got += 1;
        self.order = (self.order ^ id).wrapping_mul(0x0100_0000_01b3);
    }
}

/// A random number in [0, 1), from the process's own cheap generator.
fn rand_unit() -> f64 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) });
    STATE.with(|s| {
        // xorshift64*: plenty for spreading read times.
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// What one fanout run measured.
struct Fanout {
    deliveries_per_s: f64,
    lost: u64,
    one_order: bool,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    server_us_per_delivery: f64,
    sends_per_delivery: Option<f64>,
    loadgen_cpu: f64,
    rss_peak_kib: u64,
    evicted_after: Option<Duration>,
    /// Commands Redis ran, and round trips it served, per line sent, when a cluster was
    /// watched.
    redis_per_line: Option<(f64, f64)>,
    /// The server's own delivery delay over the measured phase, p50 and p99 (ms), from its
    /// `/metrics`: its share of the latency the generator measures.
    server_delay_ms: Option<(f64, f64)>,
}

/// The totals of one measured phase, sending and draining.
struct Sums {
    /// Deliveries there should have been: lines sent times their recipients.
    expected: u64,
    delivered: u64,
    elapsed: Duration,
    server_cpu: Duration,
    /// The load generator's own CPU time.
    own_cpu: Duration,
}

impl Fanout {
    /// The figures every fanout run has, from what each reading client heard and every
    /// latency measured (microseconds); the others are left empty.
    fn measured(heard: impl Iterator<Item = Heard>, mut lat: Vec<u32>, sums: Sums) -> Fanout {
        let heard: Vec<Heard> = heard.collect();
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        let seconds = sums.elapsed.as_secs_f64();
        Fanout {
            deliveries_per_s: sums.delivered as f64 / seconds,
            lost: sums.expected.saturating_sub(sums.delivered),
            one_order: heard.iter().all(|h| *h == heard[0]),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
            server_us_per_delivery: sums.server_cpu.as_secs_f64() * 1e6
                / sums.delivered.max(1) as f64,
            sends_per_delivery: None,
            loadgen_cpu: sums.own_cpu.as_secs_f64() / seconds,
            rss_peak_kib: 0,
            evicted_after: None,
            redis_per_line: None,
            server_delay_ms: None,
        }
    }
}

#[derive(Clone, Copy)]
enum Pace {
    Steady(u64),
    AsFastAsItGoes,
}

/// One fanout run; `stalled` adds a client that never reads.
#[derive(Clone, Copy)]
struct Shape {
    clients: usize,
    senders: usize,
    pace: Pace,
    stalled: bool,
    late: bool,
    padding: usize,
    send_for: Duration,
}

impl Shape {
    /// The usual run: 10 senders, prompt readers, short lines.
    fn new(clients: usize, pace: Pace) -> Shape {
        Shape {
            clients,
            senders: SENDERS,
            pace,
            stalled: false,
            late: false,
            padding: 0,
            send_for: SEND_FOR,
        }
    }
}

/// The server a run drives: a threadchat binary, or the peer's.
#[derive(Clone, Copy)]
enum Target<'a> {
    Threadchat(&'a str),
    /// threadchat with its `/metrics` read every second, as Prometheus would.
    Scraped(&'a str),
    Peer(&'a str),
    /// Instances of a threadchat built with the redis feature, sharing one room through
    /// the redis-server at this port.
    Cluster {
        binary: &'a str,
        instances: usize,
        redis_port: u16,
    },
}

impl Target<'_> {
    /// The servers the clients are spread over, one after the other.
    fn start(self) -> Vec<Server> {
        match self {
            Target::Threadchat(binary) => vec![Server::start(binary, &["--ping-interval", "0"])],
            Target::Scraped(binary) => {
                let mut server = Server::start(binary, &["--ping-interval", "0"]);
                server.scrape_every_second();
                vec![server]
            }
            Target::Peer(binary) => vec![Server::start_peer(binary)],
            Target::Cluster {
                binary,
                instances,
                redis_port,
            } => {
                let url = format!("redis://127.0.0.1:{redis_port}/");
                let args = ["--ping-interval", "0", "--redis", &url];
                (0..instances)
                    .map(|_| Server::start(binary, &args))
                    .collect()
            }
        }
    }
}

fn fanout(target: Target, shape: Shape) -> Fanout {
    fanout_watching(target, shape, None)
}

/// A fanout run that also counts the commands `redis` runs while the lines are sent.
fn fanout_watching(target: Target, shape: Shape, redis: Option<&probe::Redis>) -> Fanout {
    let Shape {
        clients,
        senders,
        pace,
        stalled,
        late,
        padding,
        send_for,
    } = shape;
    let servers = target.start();
    let mut load = Load::new(servers[0].kind, late);
    load.join_across(&servers, clients, true);
    if stalled {
        load.join(&servers[0], 1, false);
        load.watch_leave = Some(load.last_joined.clone());
    }
    let padding = "p".repeat(padding);
    // perf follows one process: a cluster's send calls are not counted.
    let counter = match servers.as_slice() {
        [server] => server.count_sends(),
        _ => None,
    };
    // A cluster's cost is its instances' and Redis's together: Redis runs the scripts that
    // place every line and serves every instance's reads of the stream.
    let cpu_of_servers = || {
        servers.iter().map(Server::cpu).sum::<Duration>()
            + redis.map_or(Duration::ZERO, probe::Redis::cpu)
    };
    let delays = || servers[0].metrics().map(|m| probe::delay_buckets(&m));
    let delays_before = delays();
    let cpu_before = cpu_of_servers();
    let redis_before = redis.map(probe::Redis::commands_and_reads);
    let own_before = probe::cpu_of("/proc/self/stat");
    let started = Instant::now();
    load.epoch = Instant::now();
    let stop_sending = started + send_for;
    let mut next_send = started;
    let mut turn = 0usize;
    while Instant::now() < stop_sending {
        match pace {
            Pace::Steady(rate) => {
                let gap = Duration::from_nanos(1_000_000_000 / rate);
                while Instant::now() >= next_send {
                    load.send(turn % senders, &padding);
                    turn += 1;
                    next_send += gap;
                }
                let wait = next_send.saturating_duration_since(Instant::now());
                load.turn(wait.min(Duration::from_millis(5)));
            }
            Pace::AsFastAsItGoes => {
                for s in 0..senders {
                    while load.clients[s].in_flight < WINDOW_PER_SENDER {
                        load.send(s, &padding);
                    }
                }
                load.turn(Duration::from_millis(1));
            }
        }
    }
    let expected = load.sent * load.recipients();
    load.run_until(DRAIN_FOR, |l| l.delivered >= expected);
    let elapsed = started.elapsed();
    let cpu = cpu_of_servers() - cpu_before;
    let lines = load.sent.max(1) as f64;
    let redis_per_line = redis.zip(redis_before).map(|(r, (commands, reads))| {
        let (commands_after, reads_after) = r.commands_and_reads();
        (
            commands_after.saturating_sub(commands) as f64 / lines,
            reads_after.saturating_sub(reads) as f64 / lines,
        )
    });
    let own = probe::cpu_of("/proc/self/stat") - own_before;
    let server_delay_ms = delays_before.zip(delays()).and_then(|(before, after)| {
        let q = |q| probe::delay_quantile(&before, &after, q);
        Some((q(0.5)?, q(0.99)?))
    });
    let sends = counter.and_then(|c| c.finish());

    let heard = load.clients.iter().filter(|c| c.reads).map(|c| c.heard);
    let f = Fanout::measured(
        heard,
        std::mem::take(&mut load.latencies_us),
        Sums {
            expected,
            delivered: load.delivered,
            elapsed,
            server_cpu: cpu,
            own_cpu: own,
        },
    );
    let delivered = load.delivered.max(1);
    Fanout {
        sends_per_delivery: sends.map(|s| s as f64 / delivered as f64),
        rss_peak_kib: servers.iter().map(|s| s.status("VmHWM")).max().unwrap_or(0),
        redis_per_line,
        evicted_after: load.left_at,
        server_delay_ms,
        ..f
    }
}

/// What the idle scenario measured.
struct Idle {
    joined: usize,
    connected: usize,
    rss_kib: u64,
    per_client_kib: f64,
    threads: u64,
    open_files: usize,
    idle_cpu: f64,
    one_broadcast: Duration,
}

fn idle(binary: &str, clients: usize, hold: Duration, quiet: Duration) -> Idle {
    let server = Server::start(binary, &[]);
    let empty_rss = server.status("VmRSS");
    let mut load = Load::new(Kind::Threadchat, false);
    load.join(&server, clients, true);
    let joined = load
        .clients
        .iter()
        .filter(|c| !c.nickname.is_empty())
        .count();
    // Wait out the hold, answering pings; measure CPU over its quiet end.
    load.run_until(hold.saturating_sub(quiet), |_| false);
    let cpu_before = server.cpu();
    let quiet_from = Instant::now();
    load.run_until(quiet, |_| false);
    let idle_cpu = (server.cpu() - cpu_before).as_secs_f64() / quiet_from.elapsed().as_secs_f64();
    let connected = load.readers() as usize;
    let rss = server.status("VmRSS");
    let threads = server.status("Threads");
    let open_files = server.open_files();

    let id = load.sent;
    let start = Instant::now();
    load.send(0, "");
    let everyone = connected as u32;
    load.run_until(Duration::from_secs(30), |l| {
        l.first_receipt.get(&id).copied().unwrap_or(0) >= everyone
    });
    Idle {
        joined,
        connected,
        rss_kib: rss,
        per_client_kib: rss.saturating_sub(empty_rss) as f64 / clients.max(1) as f64,
        threads,
        open_files,
        idle_cpu,
        one_broadcast: start.elapsed(),
    }
}

/// What one storm measured.
struct StormRun {
    held: usize,
    evicted: usize,
    peak_per_client_kib: f64,
    rss_after_kib: u64,
}

/// `clients` connect at once, `in_flight` handshakes at a time, and read late; once all
/// have heard every join they all leave. Repeated `rounds` times against one server, as
/// restarts of the pages would do. Returns the server's empty RSS and each round.
fn storm(binary: &str, clients: usize, in_flight: usize, rounds: usize) -> (Empty, Vec<StormRun>) {
    let server = Server::start(binary, &["--ping-interval", "0"]);
    let cold = server.status("VmRSS");
    // The same server once one client has come and gone: the code of every path is then
    // in memory, which a cold start has not touched yet.
    let mut one = Load::new(Kind::Threadchat, false);
    one.join(&server, 1, true);
    drop(one);
    assert!(wait_for(Duration::from_secs(10), || server
        .connection_threads()
        == 0));
    std::thread::sleep(Duration::from_secs(2));
    let warm = server.status("VmRSS");
    let mut runs = Vec::new();
    for round in 0..rounds {
        let mut load = Load::new(Kind::Threadchat, true);
        let addr = server.ws;
        let connectors: Vec<_> = (0..in_flight)
            .map(|t| {
                // Thread t connects clients t, t + in_flight, t + 2 * in_flight, ...
                let mine = (clients + in_flight - 1 - t) / in_flight;
                std::thread::spawn(move || {
                    (0..mine)
                        .map(|k| {
                            let source = 2 + ((t + k * in_flight + round) % 250) as u8;
                            conn::connect(addr, source).expect("connect during the storm")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for connector in connectors {
            for (stream, early) in connector.join().expect("a connector thread") {
                load.add(stream, early, true);
            }
        }
        load.settle(true);
        // Everyone has heard everyone: anyone evicted would have been closed by now.
        load.run_until(Duration::from_millis(500), |_| false);
        let held = load.readers() as usize;
        assert_eq!(load.clients.len(), clients, "every client connected");
        let peak = server.status("VmHWM");
        drop(load);
        let gone = wait_for(Duration::from_secs(60), || server.connection_threads() == 0);
        assert!(gone, "the server did not notice every client leave");
        std::thread::sleep(Duration::from_secs(5));
        runs.push(StormRun {
            held,
            evicted: clients - held,
            peak_per_client_kib: peak.saturating_sub(cold) as f64 / clients as f64,
            rss_after_kib: server.status("VmRSS"),
        });
    }
    (Empty { cold, warm }, runs)
}

/// The server's RSS with nobody connected: just started, and after one client.
struct Empty {
    cold: u64,
    warm: u64,
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// One row of the table.
struct Row {
    scenario: String,
    figure: &'static str,
    value: String,
    target: &'static str,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args
        .next()
        .unwrap_or_else(|| "target/release/threadchat".into());
    let untraced = args.next();
    let peer_binary = args.next();
    let redis_binary = args.next();
    let quick = std::env::var("BENCH_QUICK").is_ok();
    // BENCH_ONLY=text runs only the scenarios whose name contains it.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| name.contains(only.as_str());
    let open_files = raise_open_file_limit();

    let mut rows: Vec<Row> = Vec::new();
    let mut row = |scenario: &str, figure: &'static str, value: String, target: &'static str| {
        eprintln!("  {scenario:<28} {figure:<34} {value}");
        rows.push(Row {
            scenario: scenario.to_owned(),
            figure,
            value,
            target,
        });
    };

    if wanted("build") {
        if let Some(seconds) = cold_build_seconds() {
            row(
                "build",
                "cold cargo build --release (s)",
                format!("{seconds:.1}"),
                "< 60",
            );
        }
        let size = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);
        row(
            "build",
            "release binary (KiB)",
            (size / 1024).to_string(),
            "< 2048",
        );
        let server = Server::start(&binary, &[]);
        row(
            "build",
            "RSS with no clients (KiB)",
            server.status("VmRSS").to_string(),
            "< 4096",
        );
    }

    let ours = Target::Threadchat(&binary);
    let peer = peer_binary.as_deref().map(Target::Peer);

    // Against the peer, in the same run: a figure is a ratio, not an absolute. The
    // event loop's rows come first, then the same scenario with a thread per client.
    type Run = fn(Target, Shape) -> Fanout;
    let drivers: [(bool, Run); 2] = [(false, fanout), (true, threads::fanout)];
    for (threaded, run) in drivers {
        let name = if threaded { "threads" } else { "fanout" }.to_owned() + " C=10 5 senders max";
        if !wanted(&name) {
            continue;
        }
        let shape = Shape {
            senders: 5,
            ..Shape::new(10, Pace::AsFastAsItGoes)
        };
        let mine = run(ours, shape);
        let theirs = peer.map(|p| run(p, shape));
        row(
            &name,
            "deliveries/s",
            format!("{:.0}", mine.deliveries_per_s),
            if threaded { "" } else { ">= peer" },
        );
        row(&name, "lost deliveries", mine.lost.to_string(), "0");
        if threaded {
            row(&name, "one order", mine.one_order.to_string(), "true");
        }
        row(&name, "latency p99 (ms)", format!("{:.1}", mine.p99_ms), "");
        if let Some(t) = theirs {
            row(
                &name,
                "peer: deliveries/s",
                format!("{:.0}", t.deliveries_per_s),
                "",
            );
            row(
                &name,
                "peer: latency p99 (ms)",
                format!("{:.1}", t.p99_ms),
                "",
            );
            if threaded {
                row(
                    &name,
                    "ours / peer deliveries/s",
                    format!("{:.2}", mine.deliveries_per_s / t.deliveries_per_s),
                    "",
                );
            }
        }
        if threaded {
            row(
                &name,
                "load generator CPU (cores)",
                format!("{:.2}", mine.loadgen_cpu),
                "",
            );
        }
    }
    for clients in [100usize, 1000] {
        for (threaded, run) in drivers {
            let name = if threaded { "threads" } else { "late" }.to_owned()
                + &format!(" C={clients} 200 msg/s");
            if !wanted(&name) || (quick && clients > 100) {
                continue;
            }
            let shape = Shape {
                late: !threaded,
                ..Shape::new(clients, Pace::Steady(STEADY_RATE_PER_S))
            };
            let mine = run(ours, shape);
            let theirs = peer.map(|p| run(p, shape));
            // The targets are for late readers; a thread per client is set against the peer.
            let (p99_target, cpu_target, ratio_target) = match (threaded, clients == 1000) {
                (true, _) => ("", "", ""),
                (false, true) => ("p99 <= 30", "<= 1.5 and <= 0.5x peer", "<= 0.5"),
                (false, false) => ("p99 <= 8", "", ""),
            };
            row(&name, "lost deliveries", mine.lost.to_string(), "0");
            row(&name, "one order", mine.one_order.to_string(), "true");
            row(
                &name,
                "latency p50 / p99 / max (ms)",
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    mine.p50_ms, mine.p99_ms, mine.max_ms
                ),
                p99_target,
            );
            server_delay_row(&mut row, &name, &mine);
            row(
                &name,
                "server CPU per delivery (us)",
                format!("{:.2}", mine.server_us_per_delivery),
                cpu_target,
            );
            if let Some(t) = theirs {
                row(
                    &name,
                    "peer: latency p50 / p99 (ms)",
                    format!("{:.1} / {:.1}", t.p50_ms, t.p99_ms),
                    "",
                );
                row(
                    &name,
                    "peer: server CPU per delivery (us)",
                    format!("{:.2}", t.server_us_per_delivery),
                    "",
                );
                row(
                    &name,
                    "ours / peer CPU per delivery",
                    format!(
                        "{:.2}",
                        mine.server_us_per_delivery / t.server_us_per_delivery
                    ),
                    ratio_target,
                );
                if threaded {
                    row(
                        &name,
                        "ours / peer latency p99",
                        format!("{:.2}", mine.p99_ms / t.p99_ms),
                        "",
                    );
                }
            }
            // Its threads share the cores with the server's.
            if threaded {
                row(
                    &name,
                    "load generator CPU (cores)",
                    format!("{:.2}", mine.loadgen_cpu),
                    "",
                );
            }
        }
    }

    for &clients in if quick {
        &[10usize, 100][..]
    } else {
        &[10usize, 100, 1000][..]
    } {
        for (pace, label) in [
            (Pace::Steady(STEADY_RATE_PER_S), "200 msg/s"),
            (Pace::AsFastAsItGoes, "max"),
        ] {
            let name = format!("fanout C={clients} {label}");
            if !wanted(&name) {
                continue;
            }
            let f = fanout(ours, Shape::new(clients, pace));
            let steady_1000 = clients == 1000 && matches!(pace, Pace::Steady(_));
            let max_1000 = clients == 1000 && matches!(pace, Pace::AsFastAsItGoes);
            row(
                &name,
                "deliveries/s",
                format!("{:.0}", f.deliveries_per_s),
                if max_1000 { ">= 600000" } else { "" },
            );
            row(&name, "lost deliveries", f.lost.to_string(), "0");
            row(&name, "one order", f.one_order.to_string(), "true");
            row(
                &name,
                "latency p50 / p99 / max (ms)",
                format!("{:.1} / {:.1} / {:.1}", f.p50_ms, f.p99_ms, f.max_ms),
                if steady_1000 { "p99 < 50" } else { "" },
            );
            server_delay_row(&mut row, &name, &f);
            row(
                &name,
                "server CPU per delivery (us)",
                format!("{:.2}", f.server_us_per_delivery),
                if steady_1000 { "<= 2.5" } else { "" },
            );
            row(
                &name,
                "send syscalls per delivery",
                f.sends_per_delivery
                    .map_or("n/a (no perf)".into(), |s| format!("{s:.4}")),
                if max_1000 { "<= 0.15" } else { "" },
            );
            row(
                &name,
                "load generator CPU (cores)",
                format!("{:.2}", f.loadgen_cpu),
                "",
            );
        }
    }

    let holds: &[(usize, u64)] = if quick {
        &[(1000, 10)]
    } else {
        &[(1000, 60), (10_000, 60)]
    };
    for &(clients, hold_s) in holds {
        let name = format!("idle C={clients}");
        if !wanted(&name) {
            continue;
        }
        let i = idle(
            &binary,
            clients,
            Duration::from_secs(hold_s),
            Duration::from_secs(hold_s / 2),
        );
        let big = clients == 10_000;
        row(
            &name,
            "joined / connected after hold",
            format!("{} / {} (held {hold_s} s)", i.joined, i.connected),
            if big { "10000 / 10000" } else { "" },
        );
        row(&name, "server RSS (KiB)", i.rss_kib.to_string(), "");
        row(
            &name,
            "RSS per client (KiB)",
            format!("{:.1}", i.per_client_kib),
            if big { "<= 20" } else { "" },
        );
        row(
            &name,
            "threads / open files",
            format!("{} / {}", i.threads, i.open_files),
            "",
        );
        row(
            &name,
            "idle CPU (% of one core)",
            format!("{:.2}", i.idle_cpu * 100.0),
            if big { "< 1" } else { "" },
        );
        row(
            &name,
            "one broadcast reaches all (ms)",
            format!("{:.1}", i.one_broadcast.as_secs_f64() * 1000.0),
            if big { "< 250" } else { "" },
        );
    }

    if wanted("slow C=100 500 msg/s 4 KiB") {
        let shape = |stalled| Shape {
            stalled,
            padding: SLOW_LINE_BYTES,
            send_for: SLOW_SEND_FOR,
            ..Shape::new(100, Pace::Steady(500))
        };
        let healthy = fanout(ours, shape(false));
        let slowed = fanout(ours, shape(true));
        row(
            "slow C=100 500 msg/s 4 KiB",
            "healthy p99 alone (ms)",
            format!("{:.1}", healthy.p99_ms),
            "",
        );
        row(
            "slow C=100 500 msg/s 4 KiB",
            "healthy p99 with a stalled client",
            format!("{:.1}", slowed.p99_ms),
            "<= 1.5x alone",
        );
        row(
            "slow C=100 500 msg/s 4 KiB",
            "stalled client evicted after (s)",
            slowed
                .evicted_after
                .map_or("not evicted".into(), |d| format!("{:.1}", d.as_secs_f64())),
            "",
        );
        row(
            "slow C=100 500 msg/s 4 KiB",
            "lost by healthy clients",
            slowed.lost.to_string(),
            "0",
        );
        row(
            "slow C=100 500 msg/s 4 KiB",
            "server RSS peak (KiB)",
            slowed.rss_peak_kib.to_string(),
            "bounded",
        );
    }

    if let Some(untraced) = untraced.filter(|_| wanted("trace")) {
        let c = if quick { 100 } else { 1000 };
        for (label, bin) in [
            ("trace compiled in, off", binary.as_str()),
            ("trace compiled out", untraced.as_str()),
        ] {
            let f = fanout(
                Target::Threadchat(bin),
                Shape::new(c, Pace::Steady(STEADY_RATE_PER_S)),
            );
            let name = format!("{label} C={c}");
            row(
                &name,
                "server CPU per delivery (us)",
                format!("{:.2}", f.server_us_per_delivery),
                "",
            );
            row(&name, "latency p99 (ms)", format!("{:.1}", f.p99_ms), "");
        }
    }

    if let Some(clustered) = redis_binary.as_deref().filter(|_| wanted("cluster")) {
        match probe::Redis::start() {
            None => eprintln!("WARNING: no redis-server: the cluster rows are left out"),
            Some(redis) => {
                let shape = Shape::new(1000, Pace::Steady(STEADY_RATE_PER_S));
                let alone = fanout(ours, shape);
                let two = Target::Cluster {
                    binary: clustered,
                    instances: 2,
                    redis_port: redis.port,
                };
                let shared = fanout_watching(two, shape, Some(&redis));
                let (commands, round_trips) = shared.redis_per_line.unwrap_or_default();
                for (name, f) in [
                    ("cluster C=1000 on 1 instance", &alone),
                    ("cluster C=1000 on 2 instances", &shared),
                ] {
                    let two = name.ends_with("2 instances");
                    row(
                        name,
                        "deliveries/s",
                        format!("{:.0}", f.deliveries_per_s),
                        "",
                    );
                    row(name, "lost deliveries", f.lost.to_string(), "0");
                    row(name, "one order", f.one_order.to_string(), "true");
                    row(
                        name,
                        "latency p50 / p99 (ms)",
                        format!("{:.1} / {:.1}", f.p50_ms, f.p99_ms),
                        if two {
                            "p99 <= 2 + 1.2x 1 instance"
                        } else {
                            ""
                        },
                    );
                    row(
                        name,
                        "CPU per delivery, all instances and Redis (us)",
                        format!("{:.2}", f.server_us_per_delivery),
                        if two { "<= 1.3x 1 instance" } else { "" },
                    );
                }
                row(
                    "cluster C=1000 on 2 instances",
                    "redis commands / round trips per line",
                    format!("{commands:.2} / {round_trips:.2}"),
                    "",
                );
            }
        }
    }

    if let Some(clustered) = redis_binary.as_deref().filter(|_| wanted("restart")) {
        match probe::Redis::start() {
            None => eprintln!("WARNING: no redis-server: the restart rows are left out"),
            Some(redis) => {
                let clients = if quick { 200 } else { 1000 };
                let in_flight = STORM_HANDSHAKES_IN_FLIGHT;
                for (resumable, name) in [
                    (true, format!("restart C={clients}, resumable")),
                    (false, format!("restart C={clients}, plain: join again")),
                ] {
                    let r = restart::restart(clustered, &redis, clients, resumable, in_flight);
                    row(
                        &name,
                        "all back after SIGTERM (ms)",
                        format!("{:.0}", r.all_back.as_secs_f64() * 1000.0),
                        if resumable { "<= join again" } else { "" },
                    );
                    row(
                        &name,
                        "CPU per client back: instance / redis (us)",
                        format!("{:.0} / {:.0}", r.server_us_each, r.redis_us_each),
                        if resumable { "<= join again" } else { "" },
                    );
                    row(
                        &name,
                        "clients not back as they were",
                        r.failed.to_string(),
                        "0",
                    );
                    if resumable {
                        row(
                            &name,
                            "leaves and joins among missed lines",
                            r.leaves_and_joins.to_string(),
                            "0",
                        );
                    }
                }
            }
        }
    }

    if wanted("admin") {
        // The admin port's cost: the same run with /metrics read every second as Prometheus
        // would, and without anyone reading it, twice each in turn.
        let clients = if quick { 100 } else { 1000 };
        let name = format!("admin C={clients} 200 msg/s, late");
        let shape = Shape {
            late: true,
            ..Shape::new(clients, Pace::Steady(STEADY_RATE_PER_S))
        };
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            off.push(fanout(ours, shape).server_us_per_delivery);
            on.push(fanout(Target::Scraped(&binary), shape).server_us_per_delivery);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        row(
            &name,
            "CPU per delivery: unread / scraped 1/s (us)",
            format!("{:.2} / {:.2}", mean(&off), mean(&on)),
            "",
        );
        row(
            &name,
            "scraped / unread",
            format!("{:.3}", mean(&on) / mean(&off)),
            "<= 1.02",
        );
    }

    if wanted("sessions") {
        // The room holds at most half the names, sessions that wait for their clients
        // included; at the bound the rest are refused, and so is a newcomer.
        // The server's own default: half the names, or what its descriptors allow
        // (every seat may become a connection again), less the page's share.
        let bound = (open_files.saturating_sub(64 + 512) as usize).min(50_000);
        let runs: &[(usize, &str)] = if quick {
            &[(1000, "1,000")]
        } else {
            &[
                (1000, "1,000"),
                (20_000, "20,000"),
                (bound + 2000, "past the bound"),
            ]
        };
        for &(sessions, label) in runs {
            let name = format!("sessions detached: {label}");
            let d = sessions::detached(&binary, sessions, bound);
            row(
                &name,
                "held / refused",
                format!("{} / {}", d.held, d.refused),
                "all up to the bound",
            );
            row(
                &name,
                "RSS per detached session (B)",
                format!("{:.0}", d.per_session_bytes),
                "<= 1024",
            );
            row(
                &name,
                "newcomer answered: p50 / max (ms)",
                format!(
                    "{:.1} / {:.1}",
                    d.newcomer_p50.as_secs_f64() * 1000.0,
                    d.newcomer_max.as_secs_f64() * 1000.0
                ),
                "< 1000",
            );
            row(
                &name,
                "newcomers joined (of 20)",
                d.newcomers_joined.to_string(),
                if sessions > bound {
                    "0: refused, full"
                } else {
                    "20"
                },
            );
        }
    }

    if wanted("storm") {
        let (clients, rounds) = if quick { (2000, 2) } else { (10_000, 5) };
        let name = format!("storm C={clients} x{rounds}, late");
        let (empty, runs) = storm(&binary, clients, STORM_HANDSHAKES_IN_FLIGHT, rounds);
        let held: Vec<String> = runs.iter().map(|r| r.held.to_string()).collect();
        row(&name, "held, each run", held.join(" "), "all, every run");
        let evicted: usize = runs.iter().map(|r| r.evicted).sum();
        row(&name, "evicted, all runs", evicted.to_string(), "0");
        let peak = runs
            .iter()
            .map(|r| r.peak_per_client_kib)
            .fold(0.0, f64::max);
        row(
            &name,
            "peak RSS per client (KiB)",
            format!("{peak:.1}"),
            "<= 16",
        );
        let after: Vec<String> = runs.iter().map(|r| r.rss_after_kib.to_string()).collect();
        row(
            &name,
            "RSS 5 s after all left, each run (KiB)",
            after.join(" "),
            "<= 2x empty",
        );
        row(
            &name,
            "RSS empty: cold / after one client (KiB)",
            format!("{} / {}", empty.cold, empty.warm),
            "",
        );
    }

    print_table(&rows);
}

/// The server's own delivery delay (from its `/metrics`) under the generator's latency, so
/// the two can be read together: what the server took, and what the whole trip took.
fn server_delay_row(
    row: &mut impl FnMut(&str, &'static str, String, &'static str),
    name: &str,
    run: &Fanout,
) {
    if let Some((p50, p99)) = run.server_delay_ms {
        row(
            name,
            "server's delivery delay p50 / p99 (ms)",
            format!("{p50:.2} / {p99:.2}"),
            "",
        );
    }
}

/// Builds the server from nothing in a folder of its own, as a new user would.
fn cold_build_seconds() -> Option<f64> {
    let dir = "target/cold-build";
    let _ = std::fs::remove_dir_all(dir);
    let start = Instant::now();
    let status = std::process::Command::new("cargo")
        .args(["build", "--release", "--quiet", "--target-dir", dir])
        .status()
        .ok()?;
    let seconds = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(dir);
    status.success().then_some(seconds)
}

/// The facts about this machine that bound the figures.
fn describe_machine() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = read("/proc/sys/kernel/osrelease");
    let memory_gib = read("/proc/meminfo")
        .lines()
        .next()
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / (1024 * 1024));
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a live local of the expected type.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    format!(
        "machine: {cores} cores, {memory_gib} GiB, Linux {kernel}, open files {}, pid_max {}",
        limit.rlim_max,
        read("/proc/sys/kernel/pid_max")
    )
}

fn print_table(rows: &[Row]) {
    println!("{}\n", describe_machine());
    let w0 = rows
        .iter()
        .map(|r| r.scenario.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let w1 = rows
        .iter()
        .map(|r| r.figure.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let w2 = rows.iter().map(|r| r.value.len()).max().unwrap_or(5).max(5);
    println!(
        "| {:<w0$} | {:<w1$} | {:<w2$} | target |",
        "scenario", "figure", "value"
    );
    println!(
        "|{}|{}|{}|--------|",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 2),
        "-".repeat(w2 + 2)
    );
    for r in rows {
        println!(
            "| {:<w0$} | {:<w1$} | {:<w2$} | {} |",
            r.scenario, r.figure, r.value, r.target
        );
    }
}

/// Raises the open-file limit as far as this process may (a privileged one past its hard
/// limit), for itself and the servers it starts; returns the limit reached.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: live locals of the expected type.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let wanted = limit.rlim_max.max(OPEN_FILES_WANTED);
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}
