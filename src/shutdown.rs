//! How the server stops, off the path a message takes: SIGINT or SIGTERM reaches one thread,
//! which has the room say goodbye to every client (close 1001), gives the writers a moment
//! to send it, and ends the process.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::context::Shared;
use crate::event::Event;
use crate::sys::{self, ShutdownSignals};

/// How long clients get to receive their close frame when the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// How often the stopping server checks whether every client is gone.
const SHUTDOWN_CHECK_EVERY: Duration = Duration::from_millis(10);

/// Starts the thread that waits for SIGINT or SIGTERM, then stops the server. `signals` must
/// have been blocked before any other thread started.
pub fn on_signal(
    signals: ShutdownSignals,
    shared: Arc<Shared>,
    events: Sender<Event>,
    room: thread::JoinHandle<()>,
) -> Result<(), String> {
    let waiting = sys::spawn_named("signals", move || {
        let signal = signals.wait();
        eprintln!("threadchat: signal {signal}, closing every connection");
        stop(&shared, events, room);
    });
    waiting.map(drop)
}

/// Says goodbye to every client (close 1001), gives the writers a moment to send it, and
/// ends the process.
fn stop(shared: &Shared, events: Sender<Event>, room: thread::JoinHandle<()>) {
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
