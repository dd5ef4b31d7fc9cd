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
//! A full page server makes room rather than turn a visitor away: it closes the connection
//! that has waited longest for a request head, from the address that holds the most
//! ([`Places`], which the admin port shares). Only when every connection is being answered
//! is the newcomer refused (503).
//!
//! tiny_http's own server cannot be held to this: it reads each connection on a thread of
//! its pool with no deadline, holds two descriptors per connection, accepts without bound,
//! and its accept loop stops for good at the first failed `accept`. Nor can it be handed a
//! connection accepted elsewhere (it takes only a listener). So the listener and the
//! reading of request heads are ours; tiny_http's types carry the request, and its
//! `Response` prints the answer ([`page::response_bytes`]).

use std::io::Write;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::Method;

use crate::accept::{accept_each, Door};
use crate::closing::{close_with, refuse_at_once};
use crate::config::Config;
use crate::figures::{self, Figures};
use crate::limits::addresses::AddressTable;
use crate::limits::places::{Place, Places};
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

/// What every page connection needs.
pub struct PageServer {
    pub site: Site,
    pub config_js: String,
    /// Page connections per client address.
    pub addresses: Arc<AddressTable>,
    /// `--handshake-timeout`: the time a request head has to arrive.
    pub head_timeout: Duration,
    /// `--write-timeout`: the time the socket may take nothing of a response.
    pub write_timeout: Duration,
    pub trust_proxy: bool,
    /// The connections open now, at most `--max-page-connections`; only the accepting
    /// thread adds.
    pub places: Arc<Places>,
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
        addresses: AddressTable::new(page_share(config.max_clients_per_address, max_connections)),
        head_timeout: config.handshake_timeout,
        write_timeout: config.write_timeout,
        trust_proxy: config.trust_proxy,
        places: Places::new("page server", max_connections),
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
        let Some(place) = Place::take(&server.places, &socket, peer.ip()) else {
            let line = format!(
                "the page server is busy: {} connections at once, try again in a moment",
                server.places.max()
            );
            figures::add(&server.figures.page_refused[1], 1);
            return refuse_at_once(&socket, 503, &line);
        };
        let accepted_at = Instant::now();
        next_id += 1;
        let serving = server.clone();
        let spawned = thread::Builder::new()
            .name(format!("page-{next_id}"))
            .stack_size(PAGE_STACK_BYTES)
            .spawn(move || {
                serve(&serving, &socket, peer.ip(), accepted_at, &place);
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
        place.waiting_since(answered);
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
    fn the_page_share_is_at_most_a_quarter_of_the_page_server() {
        assert_eq!(page_share(500, 512), 128);
        assert_eq!(page_share(2, 512), 2);
        assert_eq!(page_share(500, 2), 1);
        assert_eq!(page_share(0, 512), 0);
    }
}
