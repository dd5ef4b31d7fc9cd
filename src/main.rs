//! threadchat: the Common Lisp Cookbook's WebSocket chat room as a small threaded server.
//!
//! ```text
//!  browser ──HTTP──> page thread ──spawns──> page-N thread (deadlines; tiny_http's Response)
//!  browser ──WS────> listener thread ──spawns──> upgrade-N thread (handshake, then exits)
//!                                                   │ starts
//!                                                   ▼
//!                                               client-N thread (reader, tungstenite)
//!                                                   │ Join / Say / Leave
//!                                                   ▼
//!                                  room thread (broadcaster, owns the nicknames)
//!                                                   │ each line framed once, appended once
//!                                                   ▼
//!                                  the log (segments of frames; a client is a cursor)
//!                                                   │ read by
//!                                                   ▼
//!                   writer-0 .. writer-N threads, one per core (one sendmsg per client a pass)
//! ```

mod accept;
mod admin;
#[cfg(feature = "redis")]
mod cluster;
mod config;
mod connection;
mod context;
mod event;
mod figures;
mod limits;
mod page;
mod room;
mod send;
mod sys;
mod trace;
mod wire;

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::config::{Command, Config};
use crate::context::Shared;
use crate::event::Event;
use crate::figures::Figures;
use crate::limits::addresses::AddressTable;
use crate::page::listener::PageServer;
use crate::room::order::Order;
use crate::room::Room;
use crate::send::log::Log;
use crate::send::writer::Writer;
use crate::sys::ShutdownSignals;
use crate::trace::Trace;

/// Descriptors kept back from the client limit for the listeners, the writers' epoll sets
/// and the odd file (a page the page server reads from `--www`). The page server's
/// connections have a share of their own, `--max-page-connections`.
const RESERVED_DESCRIPTORS: u64 = 64;

/// By default the page server gets at most this fraction of the open-file limit.
const PAGE_DESCRIPTOR_DIVISOR: u64 = 8;

/// How long clients get to receive their close frame when the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// How often the stopping server checks whether every client is gone.
const SHUTDOWN_CHECK_EVERY: Duration = Duration::from_millis(10);

/// Events waiting for the room; a client that sends faster than the room can keep up
/// waits here, which slows the sender and nobody else.
const EVENT_QUEUE: usize = 4096;

/// Connections the kernel may hold for each accepting thread: a restart brings every client
/// back at once, and a full queue drops their SYNs, each then retried a second later.
const ACCEPT_QUEUE: i32 = 4096;

fn main() -> ExitCode {
    let config = match config::parse(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", config::usage());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("threadchat: {message}\nTry 'threadchat --help'.");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("threadchat: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), String> {
    if config.trace && !cfg!(feature = "trace") {
        return Err("this build has no --trace (built without the trace feature)".into());
    }
    if config.redis.is_some() && !cfg!(feature = "redis") {
        return Err(
            "this build has no --redis: build it with the redis feature \
                    (cargo build --release --features redis)"
                .into(),
        );
    }
    figures::start();
    sys::limit_malloc_arenas();
    // Before any thread starts, so that only the signal thread ever sees SIGINT/SIGTERM.
    let signals = ShutdownSignals::block().map_err(|e| format!("cannot block signals: {e}"))?;
    let open_files = sys::raise_open_file_limit().map_err(|e| format!("open-file limit: {e}"))?;
    let max_page_connections = config
        .max_page_connections
        .unwrap_or_else(|| default_max_page_connections(open_files));
    let max_clients = config
        .max_clients
        .unwrap_or_else(|| default_max_clients(open_files, max_page_connections));
    // Every connection holds a descriptor: the chat's, the page's and the reserve must fit.
    if (max_clients + max_page_connections) as u64 + RESERVED_DESCRIPTORS > open_files {
        let given: Vec<&str> = [
            config.max_clients.map(|_| "--max-clients"),
            config
                .max_page_connections
                .map(|_| "--max-page-connections"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let settings = match given.as_slice() {
            [] => "the default limits".to_owned(),
            flags => flags.join(" and "),
        };
        return Err(format!(
            "{settings} ({max_clients} clients, {max_page_connections} page connections, \
             {RESERVED_DESCRIPTORS} kept back) need more descriptors than the open-file limit \
             {open_files}"
        ));
    }

    let page_listener = TcpListener::bind((config.bind, config.http_port)).map_err(|e| {
        format!(
            "cannot listen for HTTP on {}:{}: {e}",
            config.bind, config.http_port
        )
    })?;
    let ws_listener = TcpListener::bind((config.bind, config.ws_port)).map_err(|e| {
        format!(
            "cannot listen for WebSockets on {}:{}: {e}",
            config.bind, config.ws_port
        )
    })?;
    for listener in [&page_listener, &ws_listener] {
        sys::deepen_accept_queue(listener, ACCEPT_QUEUE).map_err(|e| e.to_string())?;
    }
    let admin_listener = match config.admin_port {
        None => None,
        Some(port) => Some(TcpListener::bind((config.admin_bind, port)).map_err(|e| {
            format!(
                "cannot listen for the admin port on {}:{port}: {e}",
                config.admin_bind
            )
        })?),
    };
    let page_addr = page_listener.local_addr().map_err(|e| e.to_string())?;
    let ws_addr = ws_listener.local_addr().map_err(|e| e.to_string())?;
    let page_url = format!("http://{page_addr}/");

    let site = match &config.www {
        None => page::Site::BuiltIn,
        Some(dir) => page::Site::Folder(
            dir.canonicalize()
                .map_err(|e| format!("--www {}: {e}", dir.display()))?,
        ),
    };

    let trace = Trace::new(config.trace);
    let (events, room_events) = crossbeam_channel::bounded(EVENT_QUEUE);
    let order = choose_order(&config, trace)?;

    // The addresses come last: scripts may take them as the sign that we are ready.
    println!(
        "threadchat: open-file limit {open_files}, so at most {max_clients} clients \
         and {max_page_connections} page connections"
    );
    println!("threadchat: chat page on {page_url}");
    println!("threadchat: WebSocket server on ws://{ws_addr}/");
    if let Some(admin) = &admin_listener {
        let addr = admin.local_addr().map_err(|e| e.to_string())?;
        println!("threadchat: admin on http://{addr}/ (/metrics, /healthz, /readyz)");
    }

    // One log per dialect: plain lines, and lines with their positions for resumable clients.
    let logs = [
        Log::new(config.max_lag_bytes),
        Log::new(config.max_lag_bytes),
    ];
    let readers = || [logs[0].reader(), logs[1].reader()];
    // Sending is most of the work, so every core gets a writer.
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let writers = (0..cores)
        .map(|i| {
            let events = events.clone();
            Writer::spawn(i, readers(), events, config.write_timeout, trace)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot start the writer threads: {e}"))?;
    let shared = Arc::new(Shared {
        events: events.clone(),
        connections: Arc::new(AtomicUsize::new(0)),
        max_clients,
        addresses: AddressTable::new(config.max_clients_per_address),
        page_url,
        trace,
        writers: writers.clone(),
        logs: readers(),
        figures: Arc::new(Figures::default()),
        config,
    });

    let config = &shared.config;
    let settings = page::PageSettings {
        ws_port: ws_addr.port(),
        ws_url: config.ws_url.clone(),
        max_message_bytes: config.max_message_bytes,
    };
    let page_server = Arc::new(PageServer {
        site,
        config_js: page::config_js(&settings),
        max_connections: max_page_connections,
        addresses: AddressTable::new(page::listener::page_share(
            config.max_clients_per_address,
            max_page_connections,
        )),
        head_timeout: config.handshake_timeout,
        write_timeout: config.write_timeout,
        trust_proxy: config.trust_proxy,
        places: Default::default(),
        figures: shared.figures.clone(),
    });
    sys::spawn_named("page", move || {
        page::listener::run(page_listener, page_server)
    })?;
    let ping_interval = shared.config.ping_interval;
    let resume_window = shared.config.resume_window;
    let figures = shared.figures.clone();
    let room = sys::spawn_named("room", move || {
        Room::new(logs, writers, order, resume_window, trace, figures)
            .run(room_events, ping_interval)
    })?;
    if let Some(listener) = admin_listener {
        let admin = Arc::new(admin::Admin::new(shared.clone()));
        sys::spawn_named("admin", move || admin::run(listener, admin))?;
    }
    let stopping = shared.clone();
    sys::spawn_named("signals", move || {
        let signal = signals.wait();
        eprintln!("threadchat: signal {signal}, closing every connection");
        stop(&stopping, events, room);
    })?;

    sys::notify_systemd("READY=1");
    connection::listener::run(ws_listener, shared);
    Ok(())
}

/// The order lines get their place in: this instance's log, or with `--redis` a stream
/// shared with other instances (this connects, prints the cluster line, and starts the
/// cluster's threads, which tell the room their news on a channel of their own).
#[cfg(feature = "redis")]
fn choose_order(config: &Config, trace: Trace) -> Result<Order, String> {
    let Some(url) = &config.redis else {
        return Ok(Order::local());
    };
    let (news, room_news) = crossbeam_channel::bounded(EVENT_QUEUE);
    let publisher = cluster::Publisher::start(
        url,
        config.redis_max_entries,
        config.resume_window,
        trace,
        news,
    )?;
    println!(
        "threadchat: room shared through {url} as instance {}",
        publisher.instance()
    );
    Ok(Order::shared(publisher, room_news))
}

#[cfg(not(feature = "redis"))]
fn choose_order(_: &Config, _: Trace) -> Result<Order, String> {
    Ok(Order::local())
}

/// The page server's share of the descriptors: a fixed number, or an eighth of them if less.
fn default_max_page_connections(open_files: u64) -> usize {
    let eighth = usize::try_from(open_files / PAGE_DESCRIPTOR_DIVISOR).unwrap_or(usize::MAX);
    config::DEFAULT_MAX_PAGE_CONNECTIONS.min(eighth).max(1)
}

/// Leaves room under the open-file limit for everything that is not a client.
fn default_max_clients(open_files: u64, max_page_connections: usize) -> usize {
    let for_clients = open_files
        .saturating_sub(RESERVED_DESCRIPTORS)
        .saturating_sub(max_page_connections as u64)
        .max(1);
    usize::try_from(for_clients)
        .unwrap_or(usize::MAX)
        .min(config::MOST_CLIENTS)
}

/// Says goodbye to every client (close 1001), gives the writers a moment to send it, and
/// ends the process.
fn stop(shared: &Shared, events: crossbeam_channel::Sender<Event>, room: thread::JoinHandle<()>) {
    shared.figures.stopping.store(true, Ordering::Release);
    sys::notify_systemd("STOPPING=1");
    let _ = events.send(Event::Shutdown);
    let _ = room.join();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while shared.connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        thread::sleep(SHUTDOWN_CHECK_EVERY);
    }
    std::process::exit(0);
}
