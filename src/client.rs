//! One client connection, from the HTTP upgrade to the last frame.
//!
//! Each connection gets a short-lived **upgrade** thread for the HTTP handshake, then a
//! **reader** thread for the rest of its life. The reader runs tungstenite's `read()` in
//! a loop, turning text messages into [`Event::Say`] for the room. It sleeps in `read()`
//! until bytes arrive, so an idle client costs no CPU.
//!
//! Why two threads in turn: the handshake needs a deep stack for a moment (tungstenite's
//! request parser alone keeps 4 KB of header slots on it), and stack pages a thread has
//! touched stay in memory for as long as the thread lives. An exiting thread gives its
//! stack back, so the connection's long life runs on a fresh stack that only the shallow
//! read path ever touches.
//!
//! The reader never writes to an open connection. tungstenite's own replies (pongs,
//! close replies, our close frames) go through [`ClientStream`], which queues them in the
//! client's [`Outbox`], the same queue as the room's broadcasts. The flusher thread is the
//! only writer, so frames never interleave on the wire, and one tungstenite state machine
//! sees the whole conversation.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tungstenite::error::ProtocolError;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Error, Message, WebSocket};

use crate::config::Config;
use crate::outbox::Outbox;
use crate::room::{ClientId, Event};
use crate::trace::{Direction, FrameTrace, Trace};
use crate::wire::{self, Frame};

/// tungstenite's read buffer, which it fills with zeros before each read, so every byte
/// of it is memory an idle client holds. Its 128 KiB default would cost more than all
/// the rest of a client; chat lines are short, and longer ones arrive in several reads.
pub const READ_BUFFER_BYTES: usize = 1024;

/// Stack reserved for the upgrade thread, which runs the handshake and exits. glibc
/// keeps exited threads' stacks for reuse, with the 16 KiB under their first frame still
/// in memory, and hands one to a new thread asking for at least a quarter of its size
/// (guard page included). At eight times the reader's size, a reader never inherits one.
/// Only address space is reserved; the handshake touches a few pages of it.
pub const UPGRADE_STACK_BYTES: usize = 8 * READER_STACK_BYTES;

/// Stack reserved for the reader thread. Only the pages it touches count against memory;
/// this is the ceiling, well above the deepest call chain of the read path.
pub const READER_STACK_BYTES: usize = 64 * 1024;

/// How long a client that we closed may take to answer with its own close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A refused message is not silent: the sender alone hears why.
const SLOW_DOWN: &str = " .... slow down: message not sent";

/// What every connection thread needs from the server.
pub struct Shared {
    pub config: Config,
    pub events: Sender<Event>,
    /// Open connections, joined or still in their handshake.
    pub connections: AtomicUsize,
    pub max_clients: usize,
    /// Where the chat page lives, for the answer to a plain HTTP request.
    pub page_url: String,
    pub trace: Trace,
    /// Where outboxes with frames to send are handed to the flusher.
    pub flusher: Sender<Arc<Outbox>>,
}

/// Counts a connection as open until the last thread serving it has ended, however it
/// ends. It moves from the upgrade thread to the reader thread.
pub struct ConnectionCount(pub Arc<Shared>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs on the upgrade thread: the handshake, then hands the open WebSocket to a new
/// reader thread. `over_capacity` connections are answered with HTTP 503 instead.
pub fn handle_new_connection(
    count: ConnectionCount,
    id: ClientId,
    socket: TcpStream,
    peer: SocketAddr,
    over_capacity: bool,
) {
    let shared = &*count.0;
    // Chat lines are small and must not wait for the previous one's ACK (Nagle).
    if socket.set_nodelay(true).is_err() {
        return;
    }
    let socket = Arc::new(socket);
    let Some(mut ws) = handshake(shared, &socket, peer, over_capacity) else {
        return;
    };
    // A deadline, not polling: an idle reader sleeps in `read` until a frame or a pong
    // arrives, and the room pings more often than `pong_timeout`.
    if socket
        .set_read_timeout(Some(shared.config.pong_timeout))
        .is_err()
    {
        return;
    }
    let trace = shared.trace;
    let outbox = Outbox::new(socket.clone(), peer, shared.flusher.clone(), trace);
    ws.get_mut()
        .start_queueing(outbox.clone(), trace.frames(Direction::In));

    let reader = thread::Builder::new()
        .name(format!("client-{id}"))
        .stack_size(READER_STACK_BYTES)
        .spawn(move || run_reader(count, id, peer, ws, outbox, socket));
    if let Err(err) = reader {
        // The connection, its outbox and its count go with the failed closure.
        eprintln!("threadchat: no reader thread for {peer}: {err}");
    }
}

/// The reader thread: announces the client, reads until the connection ends, and makes
/// sure the room hears that it left.
fn run_reader(
    count: ConnectionCount,
    id: ClientId,
    peer: SocketAddr,
    mut ws: WebSocket<ClientStream>,
    outbox: Arc<Outbox>,
    socket: Arc<TcpStream>,
) {
    let shared = &*count.0;
    let leave = LeaveOnDrop {
        id,
        events: &shared.events,
    };
    let join = Event::Join {
        id,
        peer,
        outbox: outbox.clone(),
    };
    if shared.events.send(join).is_err() {
        return; // shutting down
    }
    let ending = read_pump(&mut ws, shared, id, &outbox);
    drop(leave);

    if let Ending::Close(code, reason) = ending {
        let what = format!("closing with {code} {reason:?}");
        shared.trace.decision(outbox.label(), &what);
        close_and_linger(&mut ws, &socket, code, reason);
    }
}

/// Reports the leave when the reader is done, however it ends: an error, a panic, or a
/// clean close all free the nickname.
struct LeaveOnDrop<'a> {
    id: ClientId,
    events: &'a Sender<Event>,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Leave { id: self.id });
    }
}

/// How a session ended from the reader's side.
#[derive(Debug, PartialEq)]
enum Ending {
    /// The peer closed, or the connection is gone: nothing more to say.
    Gone,
    /// We close the connection with this code and reason.
    Close(u16, String),
}

/// Reads messages until the connection ends, passing text on to the room.
fn read_pump(
    ws: &mut WebSocket<ClientStream>,
    shared: &Shared,
    id: ClientId,
    outbox: &Arc<Outbox>,
) -> Ending {
    let config = &shared.config;
    let mut limit = RateLimit::new(config.rate_limit, config.flood_close);
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => match limit.check(Instant::now()) {
                Verdict::Send => {
                    if shared.events.send(Event::Say { id, text }).is_err() {
                        return Ending::Gone;
                    }
                }
                Verdict::Refuse => {
                    // If even this does not fit, the room evicts the client soon anyway.
                    let _ = outbox.push(wire::text_frame(SLOW_DOWN));
                }
                Verdict::Close => {
                    return Ending::Close(wire::CLOSE_POLICY, "flooding".into());
                }
            },
            Ok(Message::Binary(_)) => {
                return Ending::Close(wire::CLOSE_UNSUPPORTED, "text messages only".into())
            }
            // Pings are answered by tungstenite; a close is answered too, and the next
            // read reports the end.
            Ok(_) => {}
            Err(err) => return ending_for(err),
        }
    }
}

/// Maps a tungstenite error to the close code RFC 6455 gives for it.
fn ending_for(err: Error) -> Ending {
    let close = |code, reason: &str| Ending::Close(code, reason.to_owned());
    match err {
        Error::Capacity(_) => close(wire::CLOSE_TOO_BIG, "message too big"),
        Error::Utf8(_) => close(wire::CLOSE_INVALID_DATA, "invalid UTF-8"),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::Gone,
        Error::Protocol(p) => close(wire::CLOSE_PROTOCOL, &short_reason(&p.to_string())),
        Error::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            close(wire::CLOSE_GOING_AWAY, "silent too long")
        }
        _ => Ending::Gone,
    }
}

/// A close reason must fit in a control frame: 125 bytes less the 2-byte code.
fn short_reason(reason: &str) -> String {
    reason[..reason.floor_char_boundary(123)].to_owned()
}

/// Sends our close frame and waits briefly for the client's, so the client sees a clean
/// close rather than a reset.
fn close_and_linger(
    ws: &mut WebSocket<ClientStream>,
    socket: &TcpStream,
    code: u16,
    reason: String,
) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    if ws.close(Some(frame)).is_err() || socket.set_read_timeout(Some(CLOSE_GRACE)).is_err() {
        return;
    }
    while ws.read().is_ok() {}
}

/// The HTTP upgrade. Returns the open WebSocket, or `None` once the client has been
/// answered with an HTTP error (or has timed out).
fn handshake(
    shared: &Shared,
    socket: &Arc<TcpStream>,
    peer: SocketAddr,
    over_capacity: bool,
) -> Option<WebSocket<ClientStream>> {
    let config = &shared.config;
    let deadline = Instant::now() + config.handshake_timeout;
    let stream = ClientStream {
        socket: socket.clone(),
        outbox: None,
        handshake_deadline: Some(deadline),
        frames_in: None,
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    // The error type is tungstenite's, so its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| {
        shared.trace.handshake_request(peer, request);
        if over_capacity {
            return Err(http_error(
                503,
                &format!(
                    "server full: {} clients connected, try again later",
                    shared.max_clients
                ),
            ));
        }
        if !origin_allowed(request, &config.allow_origins) {
            return Err(http_error(
                403,
                "this page's origin may not use this chat server",
            ));
        }
        shared.trace.handshake_response(peer, request, &response);
        Ok(response)
    };
    match tungstenite::accept_hdr_with_config(stream, check, Some(ws_config)) {
        Ok(mut ws) => {
            ws.get_mut().handshake_deadline = None;
            Some(ws)
        }
        Err(HandshakeError::Interrupted(_)) => {
            shared.trace.decision(peer, "handshake timed out; dropped");
            None
        }
        Err(HandshakeError::Failure(err)) => {
            reject_failed_handshake(shared, socket, peer, err);
            None
        }
    }
}

/// Answers a request that could not be upgraded, unless tungstenite already answered it.
fn reject_failed_handshake(shared: &Shared, socket: &TcpStream, peer: SocketAddr, err: Error) {
    let (status, body) = match err {
        // tungstenite already wrote the response our callback returned.
        Error::Http(response) => {
            shared
                .trace
                .decision(peer, &format!("answered HTTP {}", response.status()));
            return;
        }
        Error::Protocol(
            ProtocolError::MissingConnectionUpgradeHeader
            | ProtocolError::MissingUpgradeWebSocketHeader
            | ProtocolError::WrongHttpMethod,
        ) => (
            426,
            format!(
                "this is threadchat's WebSocket port; the chat page is at {}",
                shared.page_url
            ),
        ),
        Error::Protocol(p) => (400, format!("bad WebSocket handshake: {p}")),
        // The client went away or sent nothing in time: nobody to answer.
        _ => {
            shared
                .trace
                .decision(peer, &format!("handshake failed: {err}"));
            return;
        }
    };
    shared
        .trace
        .decision(peer, &format!("answered HTTP {status}"));
    let reason = match status {
        426 => "Upgrade Required",
        _ => "Bad Request",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nUpgrade: websocket\r\nConnection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    );
    let mut socket = socket;
    let _ = socket.write_all(response.as_bytes());
}

fn http_error(status: u16, body: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(format!("{body}\n")));
    *response.status_mut() = tungstenite::http::StatusCode::from_u16(status)
        .unwrap_or(tungstenite::http::StatusCode::BAD_REQUEST);
    response.headers_mut().insert(
        "Content-Type",
        tungstenite::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Browsers send `Origin`; scripts usually do not. A page may talk to us if it was served
/// by the same host (the page on one port, this server on another), or if its origin is
/// allowed on the command line.
fn origin_allowed(request: &Request, allowed: &[String]) -> bool {
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let Some(origin) = header("Origin") else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    match header("Host") {
        Some(host) => host_part(origin_host).eq_ignore_ascii_case(host_part(host)),
        None => false,
    }
}

/// `example.org:8080` -> `example.org`; `[::1]:8080` -> `[::1]`.
fn host_part(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// The stream tungstenite reads and writes.
///
/// Reads come straight from the socket. Writes go to the socket during the handshake
/// and, once the reader is running, into the client's outbox as whole frames.
pub struct ClientStream {
    socket: Arc<TcpStream>,
    outbox: Option<Arc<Outbox>>,
    /// The whole handshake must finish by then; a per-read timeout alone would let a
    /// client that sends one byte every few seconds hold the connection for ever.
    handshake_deadline: Option<Instant>,
    /// With `--trace`: decodes what the client sends, frame by frame.
    frames_in: Option<FrameTrace>,
}

impl ClientStream {
    /// Called once the handshake is done: from now on writes go to the outbox, and what
    /// is read is WebSocket frames.
    fn start_queueing(&mut self, outbox: Arc<Outbox>, frames_in: Option<FrameTrace>) {
        self.outbox = Some(outbox);
        self.frames_in = frames_in;
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.handshake_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.socket.set_read_timeout(Some(left))?;
        }
        let n = (&*self.socket).read(buf)?;
        if let (Some(frames), Some(outbox)) = (&mut self.frames_in, &self.outbox) {
            frames.feed(&buf[..n], &outbox.label());
        }
        Ok(n)
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.outbox {
            None => (&*self.socket).write(buf),
            // tungstenite hands over whole frames, so each chunk stays in one piece.
            Some(outbox) => match outbox.push(Frame::from(buf)) {
                Ok(()) => Ok(buf.len()),
                Err(why) => Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("{why:?}"),
                )),
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.outbox {
            None => (&*self.socket).flush(),
            Some(_) => Ok(()),
        }
    }
}

/// A token bucket: `rate` messages a second on average, bursts up to twice that.
///
/// A client refused again and again, with no second of quiet between refusals, for
/// `flood_close`, is closed.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    /// When the current run of refusals began, and the latest refusal in it.
    flood: Option<(Instant, Instant)>,
    flood_close: Duration,
}

/// A gap this long between refusals ends a flood.
const FLOOD_QUIET: Duration = Duration::from_secs(1);

#[derive(Debug, PartialEq)]
enum Verdict {
    Send,
    Refuse,
    Close,
}

impl RateLimit {
    fn new(per_second: u32, flood_close: Duration) -> RateLimit {
        let rate = f64::from(per_second);
        RateLimit {
            rate,
            burst: 2.0 * rate,
            tokens: 2.0 * rate,
            refilled: Instant::now(),
            flood: None,
            flood_close,
        }
    }

    fn check(&mut self, now: Instant) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Send;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Send;
        }
        let start = match self.flood {
            Some((start, latest)) if now.saturating_duration_since(latest) < FLOOD_QUIET => start,
            _ => now,
        };
        self.flood = Some((start, now));
        if now.saturating_duration_since(start) >= self.flood_close {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_of_twice_the_rate_then_refuses() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(20, Duration::from_secs(10));
        for _ in 0..40 {
            assert_eq!(limit.check(t0), Verdict::Send);
        }
        assert_eq!(limit.check(t0), Verdict::Refuse);
        // 50 ms later one token has come back.
        assert_eq!(limit.check(t0 + Duration::from_millis(50)), Verdict::Send);
    }

    #[test]
    fn a_sustained_flood_is_closed_and_a_pause_forgives_it() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(1, Duration::from_secs(3));
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(limit.check(at(0)), Verdict::Send);
        assert_eq!(limit.check(at(0)), Verdict::Send);
        let mut verdicts = Vec::new();
        let mut ms = 10;
        while ms < 3_100 {
            verdicts.push(limit.check(at(ms)));
            ms += 10;
        }
        assert_eq!(verdicts.last(), Some(&Verdict::Close));
        // Quiet for a while: the bucket refills and the flood is forgotten.
        let mut calm = RateLimit::new(1, Duration::from_secs(3));
        calm.check(at(0));
        calm.check(at(0));
        assert_eq!(calm.check(at(10)), Verdict::Refuse);
        assert_eq!(calm.check(at(5_000)), Verdict::Send);
    }

    #[test]
    fn a_reader_that_panics_still_reports_its_leave() {
        let (events, heard) = crossbeam_channel::unbounded();
        let outcome = std::thread::spawn(move || {
            let _leave = LeaveOnDrop {
                id: 7,
                events: &events,
            };
            panic!("a bug in the reader");
        })
        .join();
        assert!(outcome.is_err());
        assert!(matches!(heard.try_recv(), Ok(Event::Leave { id: 7 })));
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let mut limit = RateLimit::new(0, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| limit.check(t0) == Verdict::Send));
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let short = short_reason(&long);
        assert!(short.len() <= 123);
        assert!(long.starts_with(&short));
    }

    #[test]
    fn host_part_handles_names_and_ipv6() {
        assert_eq!(host_part("example.org:8080"), "example.org");
        assert_eq!(host_part("[::1]:8080"), "[::1]");
        assert_eq!(host_part("localhost"), "localhost");
    }
}
