//! The admin port: what an operator's tools and eyes read, beside the chat.
//!
//! Off unless `--admin-port` is given, and bound to 127.0.0.1 unless `--admin-bind` says
//! otherwise: it is never the page's port, so a proxy in front of the page exposes nothing
//! new. It answers:
//! - `/metrics`: every figure in Prometheus's text format ([`metrics`]);
//! - `/healthz`: 200 while the room thread and every writer answer within
//!   [`ANSWERS_WITHIN`], 503 with the reason otherwise (a spinning or stuck thread);
//! - `/readyz`: 200 while the server takes newcomers, 503 while it stops or is full;
//! - `/`: a page that plots the figures live, for people.
//!
//! It runs the accept loop both other ports run, one short-lived thread per connection, at
//! most [`CONNECTIONS_MOST`] at once, each request head within [`HEAD_TIMEOUT`]. A full port
//! makes room as the page's does ([`Places`]): the connection that has waited longest for
//! its request head is closed, so connections that never ask cannot keep a health check
//! out; only when every place is being answered is a newcomer refused, 503 at once.

pub mod metrics;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiny_http::{HTTPVersion, Method};

use crate::accept::{accept_each, Door};
use crate::closing::{close_with, refuse_at_once};
use crate::context::Shared;
use crate::figures::{self, get};
use crate::limits::addresses::AddressTable;
use crate::limits::places::{Place, Places};
use crate::page::head::{parse_head, read_head, HeadRead, Wait};
use crate::page::{self, Answering, Reply};
use crate::sys;

/// A live server's room thread goes round its loop every second at least (its pulse), and a
/// writer's pass takes milliseconds: silence for this long means a thread is stuck.
pub const ANSWERS_WITHIN: Duration = Duration::from_secs(3);

/// Connections the admin port serves at once; more are answered 503 at once.
pub const CONNECTIONS_MOST: usize = 8;

/// The time a request head has, and then its answer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin port serves from.
pub struct Admin {
    pub shared: Arc<Shared>,
    /// Connections being served now.
    places: Arc<Places>,
    /// Counts connections per address, and limits none: [`Places`] bounds them all, and
    /// makes room among them for a newcomer.
    addresses: Arc<AddressTable>,
    /// Admin connections answered 503: every place was held by a connection being answered.
    refused: AtomicU64,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Admin {
        Admin {
            shared,
            places: Places::new("admin port", CONNECTIONS_MOST),
            addresses: AddressTable::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

/// Accepts admin connections for as long as the process runs.
pub fn run(listener: TcpListener, admin: Arc<Admin>) {
    let door = Door {
        port: "admin port",
        addresses: &admin.addresses,
        trust_proxy: false,
        refused: &admin.refused,
    };
    accept_each(&listener, &door, |socket, peer, address| {
        let socket = Arc::new(socket);
        let Some(place) = Place::take(&admin.places, &socket, peer.ip()) else {
            figures::add(&admin.refused, 1);
            return refuse_at_once(&socket, 503, "the admin port is busy; try again");
        };
        let serving = admin.clone();
        let served = sys::spawn_named("admin-request", move || {
            serve(&serving, &socket, &place);
            // The place goes last: it holds the socket's last handle.
            drop((socket, address, place));
        });
        // On failure the closure is dropped, and the connection and its place with it.
        if let Err(err) = served {
            eprintln!("threadchat: {err}");
        }
    });
}

/// One request, one answer, then the connection closes.
fn serve(admin: &Admin, socket: &TcpStream, place: &Place) {
    let ends_by = Instant::now() + HEAD_TIMEOUT;
    let mut buffer = Vec::new();
    let reply = match read_head(
        socket,
        &mut buffer,
        Wait::Head(ends_by),
        HEAD_TIMEOUT,
        ends_by,
    ) {
        HeadRead::Complete(end) => match parse_head(&buffer[..end]) {
            Ok(request) => Some((answer(admin, &request.method, &request.url), request)),
            Err((status, line)) => {
                return close_with(socket, &page::refusal_bytes(status, line));
            }
        },
        HeadRead::TooLarge => return close_with(socket, &page::refusal_bytes(431, "too large")),
        HeadRead::BadLineEnd => {
            return close_with(socket, &page::refusal_bytes(400, "lines end in CRLF"))
        }
        HeadRead::Gone => None,
    };
    let Some((reply, request)) = reply else {
        return;
    };
    // Shed to make room while its head arrived: the place is promised to another.
    if !place.answering() {
        return;
    }
    let answering = Answering {
        version: HTTPVersion(1, 1),
        headers: &request.headers,
        head_only: request.method == Method::Head,
        close: true,
    };
    if socket.set_write_timeout(Some(HEAD_TIMEOUT)).is_ok() {
        close_with(socket, &page::response_bytes(reply, &answering));
    }
}

/// Routes one admin request.
fn answer(admin: &Admin, method: &Method, url: &str) -> Reply {
    if !matches!(method, Method::Get | Method::Head) {
        return Reply::error(405, "only GET and HEAD are served here");
    }
    let path = url.split(['?', '#']).next().unwrap_or("");
    let shared = &admin.shared;
    match path {
        "/metrics" => Reply::ok(
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(shared, get(&admin.refused)).into_bytes(),
        ),
        "/healthz" => match stuck(shared) {
            None => Reply::ok("text/plain; charset=utf-8", b"alive\n".to_vec()),
            Some(why) => Reply::error(503, &why),
        },
        "/readyz" => match not_ready(shared) {
            None => Reply::ok("text/plain; charset=utf-8", b"ready\n".to_vec()),
            Some(why) => Reply::error(503, &why),
        },
        "/" => Reply::ok(
            "text/html; charset=utf-8",
            include_bytes!("page.html").to_vec(),
        ),
        #[cfg(debug_assertions)]
        "/debug/pause-room" => {
            // Tests only (debug builds): the room thread sleeps, as a stuck one would.
            let ms: u64 = url
                .split("ms=")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let ms = ms.min(10_000);
            let pause = crate::event::Event::Pause(Duration::from_millis(ms));
            match shared.events.send(pause) {
                Ok(()) => Reply::ok("text/plain; charset=utf-8", b"paused\n".to_vec()),
                Err(_) => Reply::error(503, "the room is gone"),
            }
        }
        _ => Reply::error(404, "not here: /metrics, /healthz, /readyz and / are"),
    }
}

/// Why the server is not alive, if it is not: the room thread or a writer has not answered
/// within [`ANSWERS_WITHIN`].
pub fn stuck(shared: &Shared) -> Option<String> {
    let now = figures::since_start_ms();
    let bound = ANSWERS_WITHIN.as_millis() as u64;
    let room = get(&shared.figures.room.alive_ms);
    if now.saturating_sub(room) > bound {
        let silent = now.saturating_sub(room) as f64 / 1000.0;
        return Some(format!(
            "the room thread has not answered for {silent:.1} s"
        ));
    }
    for (i, writer) in shared.writers.iter().enumerate() {
        let since = get(&writer.figures.busy_since_ms);
        if crate::room::pass_overran(since, now) {
            let busy = now.saturating_sub(since) as f64 / 1000.0;
            return Some(format!("writer-{i} has been in one pass for {busy:.1} s"));
        }
    }
    None
}

/// Why the server takes no newcomer now, if it takes none (with `--redis`, a newcomer
/// while Redis is away would only be refused with 1013).
pub fn not_ready(shared: &Shared) -> Option<String> {
    if shared.figures.stopping.load(Ordering::Acquire) {
        return Some("stopping".into());
    }
    if let Some(why) = stuck(shared) {
        return Some(why);
    }
    if figures::redis_up() == Some(false) {
        return Some("redis is unreachable".into());
    }
    if get(&figures::CLUSTER.fencing) == 1 {
        return Some("fenced: the other instances took this one for dead".into());
    }
    let held = shared.connections.load(Ordering::Acquire);
    if held >= shared.max_clients {
        return Some(format!("full: {held} of {} clients", shared.max_clients));
    }
    None
}
