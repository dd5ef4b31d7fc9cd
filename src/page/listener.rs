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
use std::io::Write;
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::Method;

use crate::accept::{accept_each, Door};
use crate::closing::{close_with, refuse_at_once};
use crate::config::Config;
use crate::figures::{self, Figures};
use crate::limits::addresses::{self, AddressTable};
use crate::page::head::{parse_head, read_head, HeadRead, Wait, HEAD_MAX_BYTES};
use crate::page::{self, Answering, Site};
use crate::sys;

/// How long a kept-alive connection may wait for its next request. The page's own
/// follow-up requests (`/config.js`, the icon) come within milliseconds; a browser keeps
/// an idle connection open far longer, and would hold a page slot all that time.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(3);

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
    /// What the admin port reads.
    pub figures: Arc<Figures>,
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

/// Starts the page thread on `listener`: the chat page from `site`, told where the
/// WebSocket port is, for at most `max_connections` connections at once.
pub fn start(
    listener: TcpListener,
    site: Site,
    max_connections: usize,
    ws_port: u16,
    config: &Config,
    figures: Arc<Figures>,
) -> Result<(), String> {
    let settings = page::PageSettings {
        ws_port,
        ws_url: config.ws_url.clone(),
        max_message_bytes: config.max_message_bytes,
    };
    let server = Arc::new(PageServer {
        site,
        config_js: page::config_js(&settings),
        max_connections,
        addresses: AddressTable::new(page_share(config.max_clients_per_address, max_connections)),
        head_timeout: config.handshake_timeout,
        write_timeout: config.write_timeout,
        trust_proxy: config.trust_proxy,
        places: Default::default(),
        figures,
    });
    sys::spawn_named("page", move || run(listener, server)).map(drop)
}

/// Accepts page connections for as long as the process runs.
pub fn run(listener: TcpListener, server: Arc<PageServer>) {
    let mut next_id: u64 = 0;
    let door = Door {
        port: "page port",
        addresses: &server.addresses,
        trust_proxy: server.trust_proxy,
        refused: &server.figures.page_refused[0],
    };
    accept_each(&listener, &door, |socket, peer, address| {
        let socket = Arc::new(socket);
        let Some(place) = Place::take(&server, &socket, peer.ip()) else {
            let line = format!(
                "the page server is busy: {} connections at once, try again in a moment",
                server.max_connections
            );
            figures::add(&server.figures.page_refused[1], 1);
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
                return refuse(server, socket, 431, &line);
            }
            HeadRead::BadLineEnd => {
                let line = "the request head's lines do not end with CRLF";
                return refuse(server, socket, 400, line);
            }
            HeadRead::Gone => return,
        };
        let parsed = parse_head(&buffer[..end]);
        buffer.drain(..end);
        let request = match parsed {
            Ok(request) => request,
            Err((status, line)) => return refuse(server, socket, status, line),
        };
        if server.trust_proxy && _address.is_none() {
            let ip = request.forwarded().unwrap_or(peer);
            match server.addresses.take(ip, Instant::now()) {
                Ok(slot) => _address = Some(slot),
                Err(refused) => {
                    refused.report("page port");
                    return refuse(server, socket, 429, &refused.reason());
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
        server.figures.page_answered(reply.status);
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

/// Answers a request that will not be served with a one-line error, counted, and closes.
fn refuse(server: &PageServer, socket: &TcpStream, status: u16, line: &str) {
    server.figures.page_answered(status);
    close_with(socket, &page::refusal_bytes(status, line));
}

#[cfg(test)]
mod tests {
    use super::*;

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
