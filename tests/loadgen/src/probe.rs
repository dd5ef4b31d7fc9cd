//! The server under test: started as a child process and measured from the outside,
//! through /proc and perf, so that measuring it changes nothing inside it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which chat server a run drives.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Kind {
    Threadchat,
    /// tokio-tungstenite's `examples/server.rs`: no nicknames, no join lines, and a sender
    /// does not get its own lines back.
    Peer,
}

pub struct Server {
    child: Child,
    pub ws: SocketAddr,
    pub kind: Kind,
    /// threadchat's admin port: every run asks for one, to read the server's own figures.
    pub admin: Option<SocketAddr>,
    /// While set, a thread scrapes `/metrics` every second, as Prometheus would.
    scraping: Option<Arc<AtomicBool>>,
}

impl Server {
    /// Starts the peer on a free port and waits until it accepts connections.
    pub fn start_peer(binary: &str) -> Server {
        let free = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let ws = free.local_addr().expect("its address");
        drop(free);
        let child = Command::new(binary)
            .arg(ws.to_string())
            // It prints a line for every message; nobody reads them.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(ws).is_err() {
            assert!(Instant::now() < deadline, "the peer never listened on {ws}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            child,
            ws,
            kind: Kind::Peer,
            admin: None,
            scraping: None,
        }
    }

    pub fn start(binary: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(binary)
            .args(["--http-port", "0", "--ws-port", "0", "--rate-limit", "0"])
            // Every load-generating client comes from this one machine's address.
            .args(["--max-clients-per-address", "0"])
            .args(["--admin-port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (mut ws, mut admin) = (None, None);
        let after = |line: &str, scheme: &str| -> Option<SocketAddr> {
            let rest = &line[line.find(scheme)? + scheme.len()..];
            rest[..rest.find('/').unwrap_or(rest.len())].parse().ok()
        };
        let mut lines = BufReader::new(stdout).lines();
        while ws.is_none() || admin.is_none() {
            let Some(Ok(line)) = lines.next() else { break };
            if line.contains(" admin on ") {
                admin = after(&line, "http://");
            } else if let Some(addr) = after(&line, "ws://") {
                ws = Some(addr);
            }
        }
        // Nobody reads the rest; a full pipe must never block the server.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            ws: ws.expect("the server printed no ws:// address"),
            kind: Kind::Threadchat,
            admin,
            scraping: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far, user plus system.
    pub fn cpu(&self) -> Duration {
        cpu_of(&format!("/proc/{}/stat", self.pid()))
    }

    /// A field of /proc/PID/status, in its own units (kB for memory).
    pub fn status(&self, field: &str) -> u64 {
        status_field(self.pid(), field)
    }

    /// Threads serving a connection (`upgrade-N`, `client-N`): none once everyone has left.
    pub fn connection_threads(&self) -> usize {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid()));
        tasks
            .map(|d| {
                d.flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .filter(|name| name.starts_with("client-") || name.starts_with("upgrade-"))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// `/metrics` as the server has it now.
    pub fn metrics(&self) -> Option<String> {
        metrics_of(self.admin?)
    }

    /// From now on, `/metrics` is read every second until the server is dropped.
    pub fn scrape_every_second(&mut self) {
        let (Some(admin), None) = (self.admin, &self.scraping) else {
            return;
        };
        let on = Arc::new(AtomicBool::new(true));
        self.scraping = Some(on.clone());
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                let _ = metrics_of(admin);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    }

    /// Starts counting the server's send-like system calls, if perf is available.
    pub fn count_sends(&self) -> Option<SyscallCounter> {
        SyscallCounter::attach(self.pid())
    }
}

/// One GET of `/metrics`.
fn metrics_of(admin: SocketAddr) -> Option<String> {
    let mut socket = TcpStream::connect(admin).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        socket,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    socket.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_owned())
}

/// The delivery delay's histogram in an exposition: each bucket's upper bound (seconds) and
/// cumulative count.
pub fn delay_buckets(metrics: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("threadchat_delivery_delay_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (bound, rest) = l.split_once('"')?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, rest.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect()
}

/// The `q` quantile of the deliveries between two snapshots of the histogram, interpolated
/// within its bucket as Prometheus's histogram_quantile does; in milliseconds.
pub fn delay_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|&(bound, n)| {
            let was = before.iter().find(|b| b.0 == bound).map_or(0.0, |b| b.1);
            (bound, n - was)
        })
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, cumulative) in &counts {
        if cumulative >= rank {
            if bound.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let share = (rank - lower.1) / (cumulative - lower.1).max(1e-9);
            return Some((lower.0 + (bound - lower.0) * share) * 1000.0);
        }
        lower = (bound, cumulative);
    }
    None
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(on) = &self.scraping {
            on.store(false, Ordering::Relaxed);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn cpu_of(stat_path: &str) -> Duration {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

pub fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// `perf stat` attached to the server for one measured interval.
pub struct SyscallCounter {
    perf: Child,
}

const SEND_SYSCALLS: &str = "syscalls:sys_enter_write,syscalls:sys_enter_writev,\
syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg";

impl SyscallCounter {
    fn attach(pid: u32) -> Option<SyscallCounter> {
        let perf = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                SEND_SYSCALLS,
                "-p",
                &pid.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        // perf needs a moment to attach; until it prints nothing it is not counting, and
        // there is no signal for that, so give it a fixed head start before measuring.
        std::thread::sleep(Duration::from_millis(300));
        Some(SyscallCounter { perf })
    }

    /// Stops counting; returns the total of the send-like calls, or None if perf failed.
    pub fn finish(self) -> Option<u64> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.perf.id() as i32, libc::SIGINT) };
        let out = self.perf.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let mut total = 0;
        let mut seen = 0;
        for line in text.lines() {
            let mut parts = line.split(',');
            if let (Some(count), Some(_), Some(event)) = (parts.next(), parts.next(), parts.next())
            {
                if event.starts_with("syscalls:") {
                    total += count.trim().parse::<u64>().ok()?;
                    seen += 1;
                }
            }
        }
        (seen > 0).then_some(total)
    }
}

/// A redis-server of the bench's own, on a free port, with no persistence.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// None when there is no redis-server on this machine.
    pub fn start() -> Option<Redis> {
        let free = TcpListener::bind("127.0.0.1:0").ok()?;
        let port = free.local_addr().ok()?.port();
        drop(free);
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Redis { child, port })
    }

    /// CPU time used so far, user plus system.
    pub fn cpu(&self) -> Duration {
        cpu_of(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Empties it: every run starts from nothing.
    pub fn flush(&self) {
        use std::io::{Read, Write};
        if let Ok(mut socket) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = socket.write_all(b"*1\r\n$8\r\nFLUSHALL\r\n");
            let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = socket.read(&mut [0u8; 64]);
        }
    }

    /// Commands Redis has run, and the reads it has made from its clients' sockets, since it
    /// started (INFO stats). A pipelined round trip costs Redis one read, however many
    /// commands it carries, so the reads count the round trips.
    pub fn commands_and_reads(&self) -> (u64, u64) {
        use std::io::{Read, Write};
        let Ok(mut socket) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, 0);
        };
        let _ = socket.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n");
        let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = socket.read(&mut chunk) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&chunk[..n]);
            if reply.ends_with(b"\r\n\r\n") || reply.len() > 64 * 1024 {
                break;
            }
        }
        let text = String::from_utf8_lossy(&reply);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        (
            field("total_commands_processed:"),
            field("total_reads_processed:"),
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
