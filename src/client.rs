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
//! The reader never writes to an open connection: see [`ClientStream`]. The client's
//! writer thread, one of a few shared by all clients, does that.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error, Message, WebSocket};

use crate::addresses::{AddressSlot, AddressTable};
use crate::config::Config;
use crate::handshake::handshake;
use crate::log::LogReader;
use crate::outbox::Outbox;
use crate::rate::{RateLimit, Verdict};
use crate::room::{ClientId, Event};
use crate::stream::ClientStream;
use crate::sys;
use crate::trace::{Direction, Trace};
use crate::wire;
use crate::writer::Writer;

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

/// Stack reserved for the reader thread (Rust's default is 2 MiB). Only the pages it
/// touches count against memory, a few KiB. glibc keeps up to 40 MiB of exited threads'
/// stacks for reuse, each with a couple of pages still in memory, so the size also decides
/// how many it keeps after a storm has left: 40 at this size.
pub const READER_STACK_BYTES: usize = 1024 * 1024;

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
    /// Connections per client address on the WebSocket port.
    pub addresses: Arc<AddressTable>,
    /// Where the chat page lives, for the answer to a plain HTTP request.
    pub page_url: String,
    pub trace: Trace,
    /// The writer threads; a client belongs to one of them for its whole life.
    pub writers: Vec<Arc<Writer>>,
    /// Where private frames learn their place among the room's lines.
    pub log: LogReader,
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
/// `address` is the connection's place in its address's share, taken by the listener, or
/// by the handshake behind a trusted proxy; it is held until the reader ends.
pub fn handle_new_connection(
    count: ConnectionCount,
    id: ClientId,
    socket: TcpStream,
    peer: SocketAddr,
    over_capacity: bool,
    mut address: Option<AddressSlot>,
) {
    let shared = &*count.0;
    // Chat lines are small and must not wait for the previous one's ACK (Nagle).
    if socket.set_nodelay(true).is_err() {
        return;
    }
    let socket = Arc::new(socket);
    let Some((mut ws, from)) = handshake(shared, &socket, peer, over_capacity, &mut address) else {
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
    let writer = shared.writers[id as usize % shared.writers.len()].clone();
    let outbox = Outbox::new(socket.clone(), from.clone(), writer, shared.log.clone());
    ws.get_mut()
        .start_queueing(outbox.clone(), trace.frames(Direction::In));

    let reader = thread::Builder::new()
        .name(format!("client-{id}"))
        .stack_size(READER_STACK_BYTES)
        .spawn(move || {
            run_reader(count, id, from, ws, outbox, socket);
            drop(address);
            sys::release_unused_stack();
        });
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
    from: String,
    mut ws: WebSocket<ClientStream>,
    outbox: Arc<Outbox>,
    socket: Arc<TcpStream>,
) {
    let shared = &*count.0;
    // Dropped last: whatever happens, the writer sends what is queued and shuts the socket.
    let _finish = FinishOnDrop(outbox.clone());
    let leave = LeaveOnDrop {
        id,
        events: &shared.events,
    };
    let join = Event::Join {
        id,
        from,
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

/// Tells the writer that the reader is done, however it ends.
struct FinishOnDrop(Arc<Outbox>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let short = short_reason(&long);
        assert!(short.len() <= 123);
        assert!(long.starts_with(&short));
    }
}
