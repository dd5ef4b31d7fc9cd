//! The page port: its listener and its connections, with the WebSocket port's discipline.
//!
//! A blocking accept loop, like the WebSocket listener's, and one `page-N` thread and one
//! descriptor per connection. The head of each request must arrive within
//! `--handshake-timeout`, and a kept-alive connection may then sit idle only for
//! [`KEEP_ALIVE_IDLE`]. The page server holds at most `--max-page-connections` at once, and
//! one address at most its share of them; past that share the connection is answered (429)
//! and closed by the accepting thread itself, so the page server can never take the
//! descriptors and threads the chat's clients need.
//!
//! A full page server makes room rather than turn a visitor away: the accepting thread closes
//! the connection that has waited longest for a request head (or sat idle longest between
//! kept-alive requests), from the address that holds the most, and admits the newcomer once
//! that connection's thread has let go of its place ([`Places`]). Otherwise a few addresses,
//! each holding its share of idle connections and reopening them as the deadline closes
//! them, would keep the page from everybody else. Only when every connection is being
//! answered is the newcomer refused (503).
//!
//! tiny_http's own server cannot be held to this: it reads each connection on a thread of
//! its pool with no deadline, holds two descriptors per connection, accepts without bound,
//! and its accept loop stops for good at the first failed `accept`. Nor can it be handed a
//! connection accepted elsewhere (it takes only a listener). So the listener and the
//! reading of request heads are ours; tiny_http's types carry the request, and its
//! `Response` prints the answer ([`page::response_bytes`]).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::{HTTPVersion, Header, Method};

use crate::accept::{accept_each, discard_arrived, refuse_at_once, Door};
use crate::limits::addresses::{self, AddressTable};
use crate::page::{self, Answering, Site};
use crate::sys;

/// How long a kept-alive connection may wait for its next request. The page's own
/// follow-up requests (`/config.js`, the icon) come within milliseconds; a browser keeps
/// an idle connection open far longer, and would hold a page slot all that time.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(3);

/// The longest request head read. Browsers send one or two KiB, cookies included; without
/// a bound, one endless header line would grow a buffer for as long as the deadline lasts.
pub const HEAD_MAX_BYTES: usize = 16 * 1024;

/// Bytes asked of the socket per read while a head arrives.
const READ_CHUNK_BYTES: usize = 2048;

/// Stack reserved for a connection's thread; it parses a head, routes it and prints a
/// response, a few pages. Only the pages touched count against memory.
const PAGE_STACK_BYTES: usize = 256 * 1024;

/// On the page port, one address may hold at most this fraction of the page server's
/// connections, however large its share of the WebSocket port: the page server holds few,
/// and one address must not take them all.
pub const PAGE_SHARE_DIVISOR: usize = 4;

/// The longest the accepting thread waits for a shed connection's thread to give its place
/// back. Woken from its read by the shutdown, that thread ends within microseconds; the
/// bound only keeps a thread the scheduler is slow to run from stalling every accept.
const SHED_WAIT: Duration = Duration::from_millis(500);

/// A full page server says so in the log at most this often: under a flood of connections
/// it makes room many times a second.
const SHED_LOG_EVERY: Duration = Duration::from_secs(60);

/// What every page connection needs.
pub struct PageServer {
    pub site: Site,
    pub config_js: String,
    pub max_connections: usize,
    /// Page connections per client address.
    pub addresses: Arc<AddressTable>,
    /// `--handshake-timeout`: the time a request head has to arrive.
    pub head_timeout: Duration,
    /// `--write-timeout`: the time the socket may take nothing of a response.
    pub write_timeout: Duration,
    pub trust_proxy: bool,
    /// The connections open now, at most `max_connections`; only the accepting thread adds.
    pub places: Places,
}

/// One address's share of the page port, from its share of the WebSocket port (0: none).
pub fn page_share(per_address: usize, max_connections: usize) -> usize {
    let most = (max_connections / PAGE_SHARE_DIVISOR).max(1);
    match per_address {
        0 => 0,
        n => n.min(most),
    }
}

/// The page server's open connections and what each is doing, so that a full server can
/// tell which one to close to make room. Bounded by `--max-page-connections`; it is looked
/// through only when the server is full.
#[derive(Default)]
pub struct Places {
    registry: Mutex<Registry>,
    /// Signalled each time a connection gives its place back.
    freed: Condvar,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    held: HashMap<u64, Held>,
    last_logged: Option<Instant>,
}

/// One open page connection.
struct Held {
    /// The connection's own socket, shared with its thread (one descriptor, not a
    /// duplicate): shutting it down wakes that thread from its read.
    socket: Arc<TcpStream>,
    seen: Seen,
}

/// What the choice of a connection to shed looks at.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// The peer, as the address table counts it. Behind a trusted proxy, the proxy.
    address: IpAddr,
    doing: Doing,
    /// Shut down to make room; its thread has yet to end.
    shed: bool,
}

/// What a page connection is doing, as far as making room is concerned.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Doing {
    /// Waiting for a request head since then: since it was accepted, or since its last
    /// answer was written (kept alive). It holds a place and is owed nothing yet.
    Waiting(Instant),
    /// A head has arrived, and its answer is being made or written: closing it would throw
    /// away what a client is receiving, so it is never the one to make room.
    Answering,
}

impl Places {
    /// A panic elsewhere while the lock was held leaves the registry whole: every change
    /// under the lock is a single step.
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Which waiting connection makes room: one of the address that holds the most page
/// connections, the one of those that has waited longest. Among a few addresses that churn
/// their own connections, they then shed each other, and a lone visitor's connection, which
/// is also the newest, is the last of all to go. None when every connection is answering or
/// already shed.
fn choose_shed<'a>(held: impl Iterator<Item = (u64, &'a Seen)> + Clone) -> Option<u64> {
    let mut per_address: HashMap<IpAddr, usize> = HashMap::new();
    for (_, seen) in held.clone() {
        *per_address.entry(seen.address).or_insert(0) += 1;
    }
    held.filter(|(_, seen)| !seen.shed)
        .filter_map(|(id, seen)| match seen.doing {
            Doing::Waiting(since) => {
                let holds = per_address.get(&seen.address).copied().unwrap_or(0);
                Some((id, (holds, Reverse(since))))
            }
            Doing::Answering => None,
        })
        .max_by_key(|&(_, rank)| rank)
        .map(|(id, _)| id)
}

/// A page connection's place, held until its thread ends, however it ends.
struct Place {
    server: Arc<PageServer>,
    id: u64,
}

impl Place {
    /// A place for a connection just accepted: a free one, or one made by shedding a waiting
    /// connection. None when every place is taken by a connection being answered, or when
    /// the shed one has not let go within [`SHED_WAIT`].
    fn take(server: &Arc<PageServer>, socket: &Arc<TcpStream>, peer: IpAddr) -> Option<Place> {
        let places = &server.places;
        let max = server.max_connections;
        let mut registry = places.lock();
        let full = registry.held.len() >= max;
        // One shed connection on its way out is room enough for one newcomer.
        if full && !registry.held.values().any(|held| held.seen.shed) {
            let shed = choose_shed(registry.held.iter().map(|(&id, held)| (id, &held.seen)))?;
            if let Some(held) = registry.held.get_mut(&shed) {
                held.seen.shed = true;
                // Its thread, asleep in a read, wakes to the end of the stream and ends.
                let _ = held.socket.shutdown(Shutdown::Both);
            }
            let now = Instant::now();
            if registry
                .last_logged
                .is_none_or(|at| now.saturating_duration_since(at) >= SHED_LOG_EVERY)
            {
                registry.last_logged = Some(now);
                eprintln!(
                    "threadchat: the page server holds {max} connections, its limit; closing \
                     the longest waiting ones to make room (logged once a minute)"
                );
            }
        }
        let (mut registry, _) = places
            .freed
            .wait_timeout_while(registry, SHED_WAIT, |registry| registry.held.len() >= max)
            .unwrap_or_else(PoisonError::into_inner);
        if registry.held.len() >= max {
            return None;
        }
        registry.next_id += 1;
        let id = registry.next_id;
        let seen = Seen {
            address: addresses::address_key(peer),
            doing: Doing::Waiting(Instant::now()),
            shed: false,
        };
        let socket = socket.clone();
        registry.held.insert(id, Held { socket, seen });
        Some(Place {
            server: server.clone(),
            id,
        })
    }

    fn set(&self, doing: Doing) {
        if let Some(held) = self.server.places.lock().held.get_mut(&self.id) {
            held.seen.doing = doing;
        }
    }

    /// Marks the connection as being answered. False if it was shed meanwhile: its socket
    /// is shut down, and the place is promised to another.
    fn answering(&self) -> bool {
        let mut registry = self.server.places.lock();
        match registry.held.get_mut(&self.id) {
            Some(held) if !held.seen.shed => {
                held.seen.doing = Doing::Answering;
                true
            }
            _ => false,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let places = &self.server.places;
        // The socket's last handle is dropped under the lock, so the descriptor is closed
        // before anyone is told the place is free.
        places.lock().held.remove(&self.id);
        places.freed.notify_all();
    }
}

/// Accepts page connections for as long as the process runs.
pub fn run(listener: TcpListener, server: Arc<PageServer>) {
    let mut next_id: u64 = 0;
    let door = Door {
        port: "page port",
        addresses: &server.addresses,
        trust_proxy: server.trust_proxy,
    };
    accept_each(&listener, &door, |socket, peer, address| {
        let socket = Arc::new(socket);
        let Some(place) = Place::take(&server, &socket, peer.ip()) else {
            let line = format!(
                "the page server is busy: {} connections at once, try again in a moment",
                server.max_connections
            );
            return refuse_at_once(&socket, 503, &line);
        };
        let accepted_at = Instant::now();
        next_id += 1;
        let spawned = thread::Builder::new()
            .name(format!("page-{next_id}"))
            .stack_size(PAGE_STACK_BYTES)
            .spawn(move || {
                serve(&place.server, &socket, peer.ip(), accepted_at, &place);
                // The place goes last: it holds the socket's last handle, and the count of
                // places must never say less than is held.
                drop((socket, address, place));
                sys::release_unused_stack();
            });
        // On failure the closure is dropped, and the connection and its place with it.
        if let Err(err) = spawned {
            eprintln!("threadchat: no thread for page connection {peer}: {err}");
        }
    });
}

/// Answers requests on one connection until it closes, asks to, or misses a deadline. A
/// connection lives at most a head's time and a response's time in all, however it trickles
/// its requests or reads its answers: a page and its few follow-ups fit easily, and no client
/// keeps one of the page server's few places for long.
fn serve(
    server: &PageServer,
    socket: &TcpStream,
    peer: IpAddr,
    accepted_at: Instant,
    place: &Place,
) {
    let ends_by = accepted_at + server.head_timeout + server.write_timeout;
    let mut buffer = Vec::new();
    let mut wait = Wait::Head(accepted_at + server.head_timeout);
    // Behind a trusted proxy, the forwarded address holds a place for the connection's life.
    let mut _address = None;
    loop {
        let read = read_head(socket, &mut buffer, wait, server.head_timeout, ends_by);
        if matches!(read, HeadRead::Gone) || !place.answering() {
            return;
        }
        let end = match read {
            HeadRead::Complete(end) => end,
            HeadRead::TooLarge => {
                let line = format!("the request head is longer than {HEAD_MAX_BYTES} bytes");
                return close_with(socket, &page::refusal_bytes(431, &line));
            }
            HeadRead::BadLineEnd => {
                let line = "the request head's lines do not end with CRLF";
                return close_with(socket, &page::refusal_bytes(400, line));
            }
            HeadRead::Gone => return,
        };
        let parsed = parse_head(&buffer[..end]);
        buffer.drain(..end);
        let request = match parsed {
            Ok(request) => request,
            Err((status, line)) => return close_with(socket, &page::refusal_bytes(status, line)),
        };
        if server.trust_proxy && _address.is_none() {
            let ip = request.forwarded().unwrap_or(peer);
            match server.addresses.take(ip, Instant::now()) {
                Ok(slot) => _address = Some(slot),
                Err(refused) => {
                    refused.report("page port");
                    return close_with(socket, &page::refusal_bytes(429, &refused.reason()));
                }
            }
        }
        // The response has what is left of the connection's life, and the write timeout.
        let left = ends_by.saturating_duration_since(Instant::now());
        let budget = left.min(server.write_timeout);
        if budget.is_zero() || socket.set_write_timeout(Some(budget)).is_err() {
            return;
        }
        let close = !request.keeps_alive();
        let reply = page::answer(
            &server.site,
            &server.config_js,
            &request.method,
            &request.url,
        );
        let answering = Answering {
            version: request.version.clone(),
            headers: &request.headers,
            head_only: request.method == Method::Head,
            close,
        };
        let response = page::response_bytes(reply, &answering);
        if close {
            return close_with(socket, &response);
        }
        // write_all retries what is interrupted; a socket that takes nothing for the write
        // timeout fails it.
        if (&*socket).write_all(&response).is_err() {
            return;
        }
        let answered = Instant::now();
        place.set(Doing::Waiting(answered));
        wait = Wait::Idle(answered + KEEP_ALIVE_IDLE);
    }
}

/// Sends the last response and closes, without resetting what the client may still be
/// sending (a body we do not read, a pipelined request).
fn close_with(socket: &TcpStream, response: &[u8]) {
    if (&*socket).write_all(response).is_ok() {
        discard_arrived(socket);
        let _ = socket.shutdown(Shutdown::Write);
    }
}

/// How long the next head may take.
#[derive(Clone, Copy)]
enum Wait {
    /// The whole head must have arrived by then.
    Head(Instant),
    /// Its first byte must arrive by then; the rest within the head timeout after it.
    Idle(Instant),
}

enum HeadRead {
    /// The head is `buffer[..end]`, its blank line included.
    Complete(usize),
    TooLarge,
    /// A line ends in a lone LF or CR. No blank line of ours will ever come, so waiting for
    /// the deadline would only hold the connection's place: it is answered at once.
    BadLineEnd,
    /// Closed, failed, or out of time: nobody to answer.
    Gone,
}

/// Reads until `buffer` holds a whole request head, by `ends_by` at the latest. Bytes after
/// it (a pipelined request) stay in the buffer for the next call.
fn read_head(
    socket: &TcpStream,
    buffer: &mut Vec<u8>,
    wait: Wait,
    head_timeout: Duration,
    ends_by: Instant,
) -> HeadRead {
    let (mut deadline, mut idle) = match wait {
        Wait::Head(by) => (by, false),
        Wait::Idle(until) if buffer.is_empty() => (until, true),
        Wait::Idle(_) => (Instant::now() + head_timeout, false),
    };
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    let mut scanned: usize = 0;
    loop {
        // RFC 9112 section 2.2: empty lines before a request line are ignored.
        let blank = buffer
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buffer.drain(..blank);
        scanned = scanned.saturating_sub(blank);
        let end = find_blank_line(buffer, scanned);
        // Bytes past the head belong to the next request and are checked with it.
        let head = &buffer[..end.unwrap_or(buffer.len())];
        if has_bare_line_end(head, scanned.saturating_sub(1)) {
            return HeadRead::BadLineEnd;
        }
        if let Some(at) = end {
            return if at > HEAD_MAX_BYTES {
                HeadRead::TooLarge
            } else {
                HeadRead::Complete(at)
            };
        }
        if buffer.len() >= HEAD_MAX_BYTES {
            return HeadRead::TooLarge;
        }
        scanned = buffer.len().saturating_sub(3);
        let left = deadline
            .min(ends_by)
            .saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return HeadRead::Gone;
        }
        match (&*socket).read(&mut chunk) {
            Ok(0) => return HeadRead::Gone,
            Ok(n) => {
                if idle {
                    idle = false;
                    deadline = Instant::now() + head_timeout;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            // Interrupted (a stopped and continued process) is retried; a timeout comes
            // back to the deadline check above.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return HeadRead::Gone,
        }
    }
}

/// Where the head ends: just past the first `\r\n\r\n` at or after `from`.
fn find_blank_line(buffer: &[u8], from: usize) -> Option<usize> {
    buffer
        .get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

/// Whether `head` has, at or after `from`, an LF without a CR before it or a CR followed by
/// anything but LF (RFC 9112 section 2.2 lets a server reject both). A CR that ends `head`
/// is undecided until its next byte arrives.
fn has_bare_line_end(head: &[u8], from: usize) -> bool {
    let Some(tail) = head.get(from..) else {
        return false;
    };
    tail.iter().enumerate().any(|(i, &byte)| {
        let at = from + i;
        match byte {
            b'\n' => at == 0 || head[at - 1] != b'\r',
            b'\r' => head.get(at + 1).is_some_and(|&next| next != b'\n'),
            _ => false,
        }
    })
}

/// A control byte other than HTAB (RFC 9110 section 5.5: field values hold none; nor do
/// names or the request line). A NUL that reached a file name or a log would end it early.
fn is_control(byte: u8) -> bool {
    byte.is_ascii_control() && byte != b'\t'
}

/// One request head, in tiny_http's types.
struct PageRequest {
    method: Method,
    url: String,
    version: HTTPVersion,
    headers: Vec<Header>,
}

impl PageRequest {
    fn header(&self, name: &'static str) -> impl DoubleEndedIterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    }

    /// HTTP/1.1 without `Connection: close`, and no body: a body is never read here, so
    /// the next request's start would be unknown. HTTP/1.0 closes.
    fn keeps_alive(&self) -> bool {
        let close = self
            .header("Connection")
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("close"));
        let body = self.header("Transfer-Encoding").next().is_some()
            || self.header("Content-Length").any(|v| v.trim() != "0");
        self.version == (1, 1) && !close && !body
    }

    fn forwarded(&self) -> Option<IpAddr> {
        addresses::last_forwarded(self.header("X-Forwarded-For"))
    }
}

/// Parses a request head (its blank line included), or says which error answers it.
fn parse_head(head: &[u8]) -> Result<PageRequest, (u16, &'static str)> {
    let text = std::str::from_utf8(head)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or((400, "the request head is not ASCII"))?;
    let mut lines = text.split("\r\n");
    // The CRLFs are the separators split on; any other control byte is refused.
    if text.split("\r\n").any(|line| line.bytes().any(is_control)) {
        return Err((400, "the request head holds a control byte"));
    }
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(url), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "the request line is not METHOD PATH HTTP/1.1"));
    };
    if method.is_empty() || !url.starts_with('/') {
        return Err((400, "the request line is not METHOD PATH HTTP/1.1"));
    }
    let method: Method = method.parse().map_err(|_| (400, "bad method"))?;
    let version = match version {
        "HTTP/1.1" => HTTPVersion(1, 1),
        "HTTP/1.0" => HTTPVersion(1, 0),
        v if v.starts_with("HTTP/") => return Err((505, "only HTTP/1.0 and HTTP/1.1 are served")),
        _ => return Err((400, "the request line is not METHOD PATH HTTP/1.1")),
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        // Obsolete line folding (RFC 9112 section 5.2) may be refused; it is.
        if line.starts_with([' ', '\t']) {
            return Err((400, "folded header lines are not accepted"));
        }
        headers.push(
            line.parse()
                .map_err(|_| (400, "a header line is not Name: value"))?,
        );
    }
    Ok(PageRequest {
        method,
        url: url.to_owned(),
        version,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Result<PageRequest, (u16, &'static str)> {
        parse_head(head.as_bytes())
    }

    #[test]
    fn a_browser_request_keeps_alive_and_a_close_does_not() {
        let request =
            parse("GET /config.js?v=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.url, "/config.js?v=1");
        assert!(request.keeps_alive());
        let closing = parse("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").unwrap();
        assert!(!closing.keeps_alive());
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keeps_alive());
        let with_body = parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert!(!with_body.keeps_alive());
    }

    #[test]
    fn malformed_heads_get_400_and_other_versions_505() {
        for bad in [
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            "GET /é HTTP/1.1\r\n\r\n",
            "GET / HTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\0c\r\n\r\n",
            "GET / HTTP/1.1\r\nA: \x01\r\n\r\n",
            "GET / HTTP/1.1\r\nA\x1b: b\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n",
            "GET /\0 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\nA: b\r\n\r\n",
        ] {
            assert_eq!(parse(bad).err().map(|e| e.0), Some(400), "{bad:?}");
        }
        assert_eq!(
            parse("GET / HTTP/2.0\r\n\r\n").err().map(|e| e.0),
            Some(505)
        );
    }

    #[test]
    fn a_tab_in_a_header_value_is_accepted() {
        let request = parse("GET / HTTP/1.1\r\nA: b\tc\r\n\r\n").unwrap();
        assert_eq!(request.header("A").next(), Some("b\tc"));
    }

    #[test]
    fn a_line_must_end_with_crlf_and_a_final_cr_waits_for_its_lf() {
        assert!(has_bare_line_end(b"GET / HTTP/1.1\nHost", 0));
        assert!(has_bare_line_end(b"GET / HTTP/1.1\rHost", 0));
        assert!(has_bare_line_end(b"\n", 0));
        assert!(!has_bare_line_end(b"GET / HTTP/1.1\r\nHost: x\r", 0));
        // Scanning from just before a CRLF sees the CR.
        assert!(!has_bare_line_end(b"GET / HTTP/1.1\r\n", 15));
        assert!(has_bare_line_end(b"GET / HTTP/1.1\r\nA\n", 15));
        assert!(!has_bare_line_end(b"GET", 10));
    }

    #[test]
    fn the_forwarded_address_is_the_last_one() {
        let request = parse(
            "GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.1\r\n\
             X-Forwarded-For: 10.0.0.1, 198.51.100.7\r\n\r\n",
        )
        .unwrap();
        assert_eq!(request.forwarded(), "198.51.100.7".parse().ok());
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        let bytes = b"GET / HTTP/1.1\r\nA: b\r\n\r\nGET /next";
        assert_eq!(find_blank_line(bytes, 0), Some(24));
        assert_eq!(find_blank_line(bytes, 22), None);
        assert_eq!(find_blank_line(b"GET", 10), None);
    }

    #[test]
    fn the_longest_waiting_connection_of_the_address_holding_most_is_shed() {
        let start = Instant::now();
        let at = |secs: u64| Doing::Waiting(start + Duration::from_secs(secs));
        let seen = |address: &str, doing: Doing| Seen {
            address: address.parse().unwrap(),
            doing,
            shed: false,
        };
        let held = [
            (1, seen("192.0.2.9", at(0))),
            (2, seen("192.0.2.1", at(3))),
            (3, seen("192.0.2.1", at(2))),
            (4, seen("192.0.2.1", Doing::Answering)),
            (5, seen("192.0.2.2", at(1))),
            (6, seen("192.0.2.2", at(5))),
        ];
        let choose = |held: &[(u64, Seen)]| choose_shed(held.iter().map(|(id, s)| (*id, s)));
        // 192.0.2.1 holds three (one answering): its longest waiting goes, not the lone
        // visitor's older one, nor 192.0.2.2's.
        assert_eq!(choose(&held), Some(3));
        let mut shed = held;
        shed[2].1.shed = true;
        assert_eq!(choose(&shed), Some(2), "a shed one is not shed twice");
        // All from one address: the longest waiting.
        let one = [(7, seen("192.0.2.1", at(4))), (8, seen("192.0.2.1", at(1)))];
        assert_eq!(choose(&one), Some(8));
        let answering = [(9, seen("192.0.2.1", Doing::Answering))];
        assert_eq!(choose(&answering), None, "an answer is never cut short");
    }

    #[test]
    fn the_page_share_is_at_most_a_quarter_of_the_page_server() {
        assert_eq!(page_share(500, 512), 128);
        assert_eq!(page_share(2, 512), 2);
        assert_eq!(page_share(500, 2), 1);
        assert_eq!(page_share(0, 512), 0);
    }
}
