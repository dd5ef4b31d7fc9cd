//! Test harness: runs the real `threadchat` binary on free ports and talks to it as
//! clients do. Every wait has a deadline, so a broken server fails a test instead of
//! hanging it; no test depends on how fast anything is.
#![allow(dead_code)]

#[cfg(feature = "redis")]
pub mod redis_server;
pub mod resumable;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::FromRawFd;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// The longest any single expected event may take before the test gives up.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub ws: SocketAddr,
    /// The admin port, when it was asked for (`--admin-port`).
    pub admin: Option<SocketAddr>,
    pub startup: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on free ports with extra flags.
    pub fn start(args: &[&str]) -> Server {
        Server::start_on(0, 0, args)
    }

    pub fn start_on(http_port: u16, ws_port: u16, args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_threadchat"));
        command
            .args(["--http-port", &http_port.to_string()])
            .args(["--ws-port", &ws_port.to_string()])
            .args(args);
        Server::spawn(command)
    }

    /// Starts the server on free ports with extra flags and `env` in its environment.
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_threadchat"));
        command
            .args(["--http-port", "0", "--ws-port", "0"])
            .args(args)
            .envs(env.iter().copied());
        Server::spawn(command)
    }

    /// Starts the server from a shell that first lowers the soft open-file limit.
    pub fn start_with_soft_file_limit(soft: u64) -> Server {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "ulimit -Sn \"$0\" && exec \"$@\" --http-port 0 --ws-port 0",
            &soft.to_string(),
            env!("CARGO_BIN_EXE_threadchat"),
        ]);
        Server::spawn(command)
    }

    fn spawn(mut command: Command) -> Server {
        let wants_admin = command.get_args().any(|a| a == "--admin-port");
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start threadchat");
        let stderr = Arc::new(Mutex::new(String::new()));
        drain_into(child.stderr.take().unwrap(), stderr.clone());
        // The startup lines come through a channel, so that waiting for them has a deadline
        // even when the server prints nothing and does not exit.
        let (lines_tx, lines_rx) = mpsc::channel();
        let out_pipe = child.stdout.take().unwrap();
        // Keeps reading after the startup lines, so the server never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let mut startup = Vec::new();
        let (mut http, mut ws, mut admin) = (None, None, None);
        while http.is_none() || ws.is_none() || (wants_admin && admin.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines_rx.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "threadchat printed no addresses within {PATIENCE:?}; killed it. \
                         stdout {startup:?}, stderr {:?}",
                        stderr.lock().unwrap()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_at_most(&mut child, PATIENCE);
                    panic!(
                        "threadchat exited ({status:?}) before printing its addresses: \
                         stdout {startup:?}, stderr {:?}",
                        stderr.lock().unwrap()
                    );
                }
            };
            if line.contains(" admin on ") {
                admin = address_after(&line, "http://");
            } else if let Some(addr) = address_after(&line, "http://") {
                http = Some(addr);
            }
            if let Some(addr) = address_after(&line, "ws://") {
                ws = Some(addr);
            }
            startup.push(line);
        }
        Server {
            child,
            http: http.unwrap(),
            ws: ws.unwrap(),
            admin,
            startup,
            stderr,
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.ws, path)
    }

    pub fn join(&self) -> Client {
        Client::connect(&self.ws_url("/"))
    }

    /// Everything the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal and waits (with a deadline) for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        signal_process(self.child.id(), signal);
        wait_at_most(&mut self.child, PATIENCE)
            .unwrap_or_else(|| panic!("server did not exit within {PATIENCE:?} of SIG{signal}"))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends everything `pipe` yields to `sink`, on a thread of its own, until it ends.
fn drain_into(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<String>>) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// Waits for `child` to exit, for at most `most`; None if it is still running then.
pub fn wait_at_most(child: &mut Child, most: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + most;
    loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the binary with `args` until it exits, and returns what it printed. It gets free
/// ports (`--http-port 0 --ws-port 0`, before `args`), so a run that should have ended at
/// once but went on to serve takes nobody's port; one still running after `deadline` is
/// killed and fails the test.
pub fn run_to_exit(args: &[&str], deadline: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_threadchat"))
        .args(["--http-port", "0", "--ws-port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start threadchat");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    drain_into(child.stdout.take().unwrap(), stdout.clone());
    drain_into(child.stderr.take().unwrap(), Arc::clone(&stderr));
    let Some(status) = wait_at_most(&mut child, deadline) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "threadchat {args:?} was still running after {deadline:?}; killed it. \
             stdout {:?}, stderr {:?}",
            stdout.lock().unwrap(),
            stderr.lock().unwrap()
        );
    };
    // The pipes end with the process; what is left in them is read by now or very soon.
    let ended = |pipe: &Arc<Mutex<String>>| Arc::strong_count(pipe) == 1;
    let drained = Instant::now() + PATIENCE;
    while !(ended(&stdout) && ended(&stderr)) && Instant::now() < drained {
        thread::sleep(Duration::from_millis(5));
    }
    let take = |pipe: &Arc<Mutex<String>>| pipe.lock().unwrap().clone().into_bytes();
    Output {
        status,
        stdout: take(&stdout),
        stderr: take(&stderr),
    }
}

fn address_after(line: &str, scheme: &str) -> Option<SocketAddr> {
    let start = line.find(scheme)? + scheme.len();
    let rest = &line[start..];
    rest[..rest.find('/')?].parse().ok()
}

/// Polls `condition` until it holds or the deadline passes.
pub fn eventually(what: &str, condition: impl FnMut() -> bool) {
    eventually_by(what, Instant::now() + PATIENCE, condition);
}

/// Polls `condition` until it holds, failing the test if it does not by `deadline`: for what
/// README promises by a given time.
pub fn eventually_by(what: &str, deadline: Instant, mut condition: impl FnMut() -> bool) {
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// What README calls "at once", on a loaded two-core machine: promised 0, plus a margin of
/// one second for a debug build whose cores other work shares.
pub const AT_ONCE: Duration = Duration::from_secs(1);

/// A chat client over tungstenite.
pub struct Client {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
    pub nickname: String,
}

impl Client {
    /// Connects and reads the client's own join line, which names it.
    pub fn connect(url: &str) -> Client {
        Client::connect_with(url, &[])
    }

    pub fn connect_with(url: &str, headers: &[(&str, &str)]) -> Client {
        let mut ws = handshake(url, headers).expect("handshake");
        let first = read_text(&mut ws);
        let nickname = first
            .strip_prefix(" .... ")
            .and_then(|rest| rest.strip_suffix(" has joined."))
            .unwrap_or_else(|| panic!("first line was not our join: {first:?}"))
            .to_owned();
        Client { ws, nickname }
    }

    pub fn say(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// The next text line; fails the test if none arrives in time.
    pub fn line(&mut self) -> String {
        read_text(&mut self.ws)
    }

    /// Reads lines until `want` arrives, returning the lines read before it.
    pub fn until(&mut self, want: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let line = self.line();
            if line == want {
                return before;
            }
            before.push(line);
        }
    }

    /// Reads until the server closes, and returns its close code and reason.
    pub fn close_frame(&mut self) -> (u16, String) {
        expect_close(&mut self.ws)
    }
}

/// Everything `client` hears for `quiet`: used only to show that something does NOT come,
/// for as long as it would take to come if it did.
pub fn lines_for(client: &mut Client, quiet: Duration) -> Vec<String> {
    let until = Instant::now() + quiet;
    std::iter::from_fn(|| line_by(client, until)).collect()
}

/// The next text line, or None if none arrives by `deadline`.
pub fn line_by(client: &mut Client, deadline: Instant) -> Option<String> {
    let MaybeTlsStream::Plain(socket) = client.ws.get_ref() else {
        unreachable!("a ws:// client")
    };
    let socket = socket.try_clone().unwrap();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        let read = client.ws.read();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        match read {
            Ok(Message::Text(text)) => return Some(text.as_str().to_owned()),
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return None
            }
            other => panic!("expected a text line, got {other:?}"),
        }
    }
}

pub fn handshake(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocket<MaybeTlsStream<TcpStream>>, tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    // tungstenite::connect would wait without a deadline, for the connection and for the
    // answer: the harness connects, and every read and write has PATIENCE.
    let uri = request.uri();
    let host = uri
        .host()
        .expect("a host in the URL")
        .trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(80);
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(tungstenite::Error::Io)?
        .next()
        .expect("an address for the host");
    let socket = tcp_connect(addr).map_err(tungstenite::Error::Io)?;
    socket.set_write_timeout(Some(PATIENCE)).unwrap();
    // As tungstenite::connect does: each frame goes out when it is written, not held back
    // for the acknowledgement of the one before.
    socket.set_nodelay(true).unwrap();
    match tungstenite::client(request, MaybeTlsStream::Plain(socket)) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(err)) => Err(err),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            Err(tungstenite::Error::Io(std::io::Error::new(
                ErrorKind::TimedOut,
                format!("no answer to the upgrade within {PATIENCE:?}"),
            )))
        }
    }
}

/// A TCP connection to `addr` that reads with PATIENCE; connecting itself gives up after
/// PATIENCE too (a listener whose backlog is full drops the SYN, and the kernel's own
/// retries last minutes).
pub fn tcp_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpStream::connect_timeout(&addr, PATIENCE)?;
    socket.set_read_timeout(Some(PATIENCE))?;
    Ok(socket)
}

pub fn read_text<S: Read + Write>(ws: &mut WebSocket<S>) -> String {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => return text.as_str().to_owned(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a text line, got {other:?}"),
        }
    }
}

/// Reads past any text until the close frame, and returns its code and reason.
pub fn expect_close<S: Read + Write>(ws: &mut WebSocket<S>) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned())
            }
            Ok(Message::Close(None)) => return (u16::from(CloseCode::Status), String::new()),
            Ok(_) => continue,
            Err(err) => panic!("connection ended without a close frame: {err}"),
        }
    }
}

/// Returns once every client has heard every join that happened before this call.
///
/// Clients get their `101` before the room announces them, so two clients that connect
/// close together may be announced in either order: waiting for "the last one's join"
/// can wait for ever. A line sent now reaches everyone after every earlier join.
pub fn settle(clients: &mut [Client]) {
    let marker = format!("{}: settle", clients[0].nickname);
    clients[0].say("settle");
    for client in clients.iter_mut() {
        client.until(&marker);
    }
}

/// One raw HTTP/1.1 exchange; returns the status code, the headers and the body.
pub fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    http_over(tcp_connect(addr).unwrap(), request)
}

/// [`http`] over a connection already made, e.g. by [`connect_from`].
pub fn http_over(mut socket: TcpStream, request: &str) -> (u16, String, String) {
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    socket.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = socket.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, head.to_owned(), body.to_owned())
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// A TCP connection that has finished the WebSocket handshake, for sending hand-made
/// (and malformed) frames.
pub struct RawClient {
    pub socket: TcpStream,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let mut socket = tcp_connect(addr).unwrap();
        socket
            .write_all(
                format!(
                    "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        RawClient { socket }
    }

    /// Sends one frame as given: `first` is FIN/RSV/opcode, `mask` None means unmasked.
    pub fn send_frame(&mut self, first: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
        let mut frame = vec![first];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n < 65536 => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                frame.extend_from_slice(&key);
                frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => frame.extend_from_slice(payload),
        }
        let _ = self.socket.write_all(&frame);
    }

    /// Reads one whole server frame: its opcode and payload.
    pub fn next_frame(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        self.socket
            .read_exact(&mut head)
            .expect("a frame from the server");
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut ext = [0u8; 2];
            self.socket.read_exact(&mut ext).unwrap();
            len = u64::from(u16::from_be_bytes(ext));
        } else if len == 127 {
            let mut ext = [0u8; 8];
            self.socket.read_exact(&mut ext).unwrap();
            len = u64::from_be_bytes(ext);
        }
        let mut payload = vec![0u8; len as usize];
        self.socket.read_exact(&mut payload).unwrap();
        (head[0] & 0x0f, payload)
    }

    /// The next text message, skipping pings and pongs.
    pub fn text(&mut self) -> String {
        loop {
            match self.next_frame() {
                (0x1, payload) => return String::from_utf8(payload).unwrap(),
                (0x9 | 0xA, _) => continue,
                (op, _) => panic!("expected text, got opcode {op:#x}"),
            }
        }
    }

    /// Reads server frames until a close frame, and returns its code and reason.
    pub fn close_code(&mut self) -> (u16, String) {
        loop {
            if let (0x8, payload) = self.next_frame() {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
            }
        }
    }
}

pub const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

/// A TCP connection to `to` from the local address `from`, e.g. 127.0.0.2, so that one
/// machine can play clients at several addresses (all of 127.0.0.0/8 is loopback).
pub fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    connect_from_with_receive_buffer(from, to, None)
}

/// [`connect_from`], with the socket's receive buffer set to `receive_bytes` before it
/// connects, so that the window it offers stays that small: the server's writes to it then
/// stop once its own send buffer is full.
pub fn connect_from_with_receive_buffer(
    from: IpAddr,
    to: SocketAddr,
    receive_bytes: Option<usize>,
) -> TcpStream {
    let (IpAddr::V4(from), IpAddr::V4(to_ip)) = (from, to.ip()) else {
        panic!("connect_from speaks IPv4 only");
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let (local, remote) = (sockaddr(from, 0), sockaddr(to_ip, to.port()));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, owned by the TcpStream as soon as it exists; the addresses
    // and the buffer size are live locals of the length passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = TcpStream::from_raw_fd(fd);
        if let Some(bytes) = receive_bytes {
            let bytes = libc::c_int::try_from(bytes).expect("a receive buffer size");
            let set = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(set, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        }
        let bound = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert_eq!(bound, 0, "bind {from}: {}", std::io::Error::last_os_error());
        let connected = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert_eq!(
            connected,
            0,
            "connect {to}: {}",
            std::io::Error::last_os_error()
        );
        socket
    }
}

/// The largest send buffer the kernel grows a TCP socket to (tcp_wmem's third figure; 4 MiB
/// by default): what a dropped connection may never have received, and how much a client
/// that reads nothing must be sent before the server's writes to it stop.
pub fn largest_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|w| w.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// How many entries a /proc directory has: a process's threads (`task`) or descriptors
/// (`fd`).
pub fn count_entries(path: String) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

pub fn own_hard_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a live local of the expected type.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_max
}

/// Tests that hold many sockets need more than the usual soft limit of 1024.
pub fn raise_own_open_file_limit() {
    let hard = own_hard_open_file_limit();
    let limit = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: a live local of the expected type.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
}

/// Sends a signal by name (`STOP`, `CONT`, `KILL`...) to a process.
pub fn signal_process(pid: u32, name: &str) {
    let signal = match name {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        other => panic!("no signal SIG{other} here"),
    };
    let pid = libc::pid_t::try_from(pid).expect("a process id");
    // SAFETY: kill(2) takes plain integers; the process is one this test started.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        sent,
        0,
        "kill -{name} {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// Stops the process for `pause` and continues it, as Ctrl-Z then `fg`, `docker pause`, or a
/// debugger would.
pub fn pause_process(pid: u32, pause: Duration) {
    signal_process(pid, "STOP");
    let until = Instant::now() + pause;
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    signal_process(pid, "CONT");
}

/// Sends `lines` lines of 64 KiB from the witness, 1 MiB unread at most, each read back by
/// the witness itself; returns the line as everyone gets it.
pub fn echoed_flood(witness: &mut Client, lines: usize) -> String {
    let line = "w".repeat(64 * 1024);
    let mine = format!("{}: {line}", witness.nickname);
    let (mut sent, mut echoed) = (0, 0);
    while echoed < lines {
        while sent < lines && sent < echoed + 16 {
            witness.say(&line);
            sent += 1;
        }
        let got = witness.line();
        assert!(got == mine, "the witness heard {got:.80}");
        echoed += 1;
    }
    mine
}

/// A zero linger time: closing `socket` then sends a reset instead of an orderly end.
pub fn reset_on_close(socket: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a live socket and a live local of the type the option expects.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_LINGER");
}

/// Connects and says `text` the moment the upgrade is answered, before reading anything, so
/// that the line reaches the server right behind the handshake, before the room may have
/// placed the client's join. Returns the client's name once its own line came back after its
/// join, or what it heard instead (a notice, or a close). Others' joins and leaves pass by:
/// the client before it may be announced as gone after this one has joined.
pub fn say_at_once(url: &str, text: &str) -> Result<String, String> {
    let mut ws = handshake(url, &[]).expect("handshake");
    ws.send(Message::text(text)).expect("send");
    let mut name = None;
    loop {
        match ws.read() {
            Ok(Message::Text(line)) => {
                let line = line.as_str();
                match &name {
                    None => match line
                        .strip_prefix(" .... ")
                        .and_then(|l| l.strip_suffix(" has joined."))
                    {
                        Some(joined) => name = Some(joined.to_owned()),
                        None => return Err(line.to_owned()),
                    },
                    Some(me) if line == format!("{me}: {text}") => return Ok(me.clone()),
                    Some(me)
                        if line.starts_with(" .... ")
                            && !line.ends_with(" has joined.")
                            && (!line.ends_with(" has left.")
                                || line == format!(" .... {me} has left.")) =>
                    {
                        return Err(line.to_owned())
                    }
                    Some(_) => {} // someone else's line
                }
            }
            Ok(Message::Close(frame)) => return Err(format!("closed: {frame:?}")),
            Ok(_) => {}
            Err(e) => panic!("the connection ended without a word: {e}"),
        }
    }
}

/// The server's end of `client`'s connection, from /proc/net/tcp: the bytes it has sent that
/// the client has not acknowledged, and the bytes it has received that it has not read yet.
pub fn server_side_queues(server: &Server, client: &TcpStream) -> Option<(u64, u64)> {
    let ours = client.local_addr().ok()?.port();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
        if port(local)? != server.ws.port() || port(remote)? != ours {
            return None;
        }
        let (sent, received) = queues.split_once(':')?;
        Some((
            u64::from_str_radix(sent, 16).ok()?,
            u64::from_str_radix(received, 16).ok()?,
        ))
    })
}
