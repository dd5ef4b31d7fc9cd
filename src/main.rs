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
mod closing;
#[cfg(feature = "redis")]
mod cluster;
mod config;
mod connection;
mod context;
mod dialect;
mod event;
mod figures;
mod limits;
mod page;
mod room;
mod send;
mod shutdown;
mod sys;
mod trace;
mod wire;

use std::net::{IpAddr, TcpListener};
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread;

use crate::config::{Command, Config};
use crate::context::Shared;
use crate::figures::Figures;
use crate::limits::addresses::AddressTable;
use crate::limits::descriptors;
use crate::room::order::Order;
use crate::room::Room;
use crate::send::log::Log;
use crate::send::writer::Writer;
use crate::sys::ShutdownSignals;
use crate::trace::Trace;

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
    config.check_build()?;
    figures::start();
    sys::limit_malloc_arenas();
    // Before any thread starts, so that only the signal thread ever sees SIGINT/SIGTERM.
    let signals = ShutdownSignals::block().map_err(|e| format!("cannot block signals: {e}"))?;
    let open_files = sys::raise_open_file_limit().map_err(|e| format!("open-file limit: {e}"))?;
    let (max_clients, max_page_connections) = descriptors::shares(&config, open_files)?;

    let page_listener = bind("HTTP", config.bind, config.http_port)?;
    let ws_listener = bind("WebSockets", config.bind, config.ws_port)?;
    for listener in [&page_listener, &ws_listener] {
        sys::deepen_accept_queue(listener, ACCEPT_QUEUE).map_err(|e| e.to_string())?;
    }
    let admin_listener = match config.admin_port {
        None => None,
        Some(port) => Some(bind("the admin port", config.admin_bind, port)?),
    };
    let page_addr = page_listener.local_addr().map_err(|e| e.to_string())?;
    let ws_addr = ws_listener.local_addr().map_err(|e| e.to_string())?;
    let page_url = format!("http://{page_addr}/");

    let site = page::Site::of(config.www.as_deref())?;

    let trace = Trace::new(config.trace);
    let (events, room_events) = crossbeam_channel::bounded(EVENT_QUEUE);
    let order = Order::start(&config, trace)?;

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

    let (ws_port, figures) = (ws_addr.port(), shared.figures.clone());
    page::listener::start(
        page_listener,
        site,
        max_page_connections,
        ws_port,
        &shared.config,
        figures,
    )?;
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
    shutdown::on_signal(signals, shared.clone(), events, room)?;

    sys::notify_systemd("READY=1");
    connection::listener::run(ws_listener, shared);
    Ok(())
}

/// Listens on `ip`:`port`, or says which port could not be had, and why.
fn bind(what: &str, ip: IpAddr, port: u16) -> Result<TcpListener, String> {
    TcpListener::bind((ip, port))
        .map_err(|e| format!("cannot listen for {what} on {ip}:{port}: {e}"))
}
