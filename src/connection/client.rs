//! One client connection, from the HTTP upgrade to the last frame.
//!
//! Each connection gets a short-lived **upgrade** thread for the HTTP handshake, then a
//! **reader** thread for the rest of its life. The reader runs tungstenite's `read()` in
//! a loop, turning text messages into [`Event::Say`] for the room. It sleeps in `read()`
//! until bytes arrive, so an idle client costs no CPU. Why two threads in turn, and their
//! stacks' sizes: `stacks.rs`.
//!
//! The reader never writes to an open connection: see [`ClientStream`]. The client's
//! writer thread, one of a few shared by all clients, does that.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::connection::ending::{end_connection, ending_for, Ending, ReaderEnd};
use crate::connection::first_message::first_message;
use crate::connection::handshake::handshake;
use crate::connection::socket::ClientStream;
use crate::connection::stacks::READER_STACK_BYTES;
use crate::context::Shared;
use crate::dialect::Resume;
use crate::event::{ClientId, Event};
use crate::limits::addresses::AddressSlot;
use crate::limits::rate::{RateLimit, Verdict};
use crate::limits::seat::{ConnectionCount, Seat};
use crate::send::outbox::{Outbox, Phase};
use crate::send::writer::Writer;
use crate::sys;
use crate::wire::{self, Dialect};

/// A refused message is not silent: the sender alone hears why.
const SLOW_DOWN: &str = " .... slow down: message not sent";

/// Runs on the upgrade thread: the handshake, then hands the open WebSocket to a new
/// reader thread. `over_capacity` connections are answered with HTTP 503 instead.
/// `address` is the connection's place in its address's share, taken by the listener, or
/// by the handshake behind a trusted proxy; with `count`, it becomes the client's [`Seat`].
pub fn handle_new_connection(
    shared: &Arc<Shared>,
    count: ConnectionCount,
    id: ClientId,
    socket: TcpStream,
    peer: SocketAddr,
    over_capacity: bool,
    mut address: Option<AddressSlot>,
) {
    // Chat lines are small and must not wait for the previous one's ACK (Nagle).
    if socket.set_nodelay(true).is_err() {
        return;
    }
    let socket = Arc::new(socket);
    let Some((mut ws, from, dialect)) =
        handshake(shared, &socket, peer, over_capacity, &mut address)
    else {
        return;
    };
    let resume = match dialect {
        Dialect::Plain => None,
        Dialect::Resume => match first_message(&mut ws, shared.trace, peer) {
            Some(resume) => Some(resume),
            None => return,
        },
    };
    ws.get_mut().handshake_done();
    let seat = Seat::new(count, address);
    let silence = shared
        .config
        .ping_interval
        .map(|_| shared.config.pong_timeout);
    if sys::notice_silence(&socket, silence).is_err() {
        return;
    }
    let trace = shared.trace;
    let index = id as usize % shared.writers.len();
    let writer = shared.writers[index].clone();
    let outbox = Arc::new(Outbox::new(
        socket.clone(),
        from.clone(),
        index,
        dialect,
        shared.logs[dialect as usize].clone(),
    ));
    ws.get_mut()
        .start_queueing(outbox.clone(), writer.clone(), trace);

    // On the heap: held by value, the WebSocket would sit in the reader's frames for the
    // connection's whole life and push every read onto a stack page more (see end_connection).
    let ws = Box::new(ws);
    let shared = shared.clone();
    let reader = thread::Builder::new()
        .name(format!("client-{id}"))
        .stack_size(READER_STACK_BYTES)
        .spawn(move || {
            let connection = Connection {
                id,
                from,
                outbox,
                seat,
                resume,
            };
            run_reader(&shared, connection, ws, writer);
            sys::release_unused_stack();
        });
    if let Err(err) = reader {
        // The connection, its outbox and its count go with the failed closure.
        eprintln!("threadchat: no reader thread for {peer}: {err}");
    }
}

/// What the reader thread hands the room about its client at the join.
struct Connection {
    id: ClientId,
    from: String,
    outbox: Arc<Outbox>,
    seat: Arc<Seat>,
    resume: Option<Resume>,
}

/// The reader thread: announces the client, reads until the connection ends, closes it,
/// and drains what the client still sends. Its seat is let go when the thread ends.
fn run_reader(
    shared: &Shared,
    connection: Connection,
    mut ws: Box<WebSocket<ClientStream>>,
    writer: Arc<Writer>,
) {
    let Connection {
        id,
        from,
        outbox,
        seat,
        resume,
    } = connection;
    let end = ReaderEnd {
        id,
        outbox: &outbox,
        writer: &writer,
        events: &shared.events,
    };
    let join = Event::Join {
        id,
        from,
        outbox: outbox.clone(),
        seat: seat.clone(),
        resume,
    };
    if shared.events.send(join).is_err() {
        return; // shutting down
    }
    let ending = read_pump(&mut ws, shared, id, &outbox, &writer);
    end_connection(&end, ending, shared);
}

/// Reads messages until the connection ends, passing text on to the room.
fn read_pump(
    ws: &mut WebSocket<ClientStream>,
    shared: &Shared,
    id: ClientId,
    outbox: &Arc<Outbox>,
    writer: &Writer,
) -> Ending {
    let config = &shared.config;
    let mut limit = RateLimit::new(config.rate_limit, config.flood_close);
    let mut going_away = false;
    loop {
        let message = ws.read();
        // The writer may have evicted the client meanwhile: it has told the room already.
        if outbox.phase() != Phase::Open {
            return Ending::EndedByWriter;
        }
        match message {
            Ok(Message::Text(text)) => match limit.check(Instant::now()) {
                Verdict::Send => {
                    if shared.events.send(Event::Say { id, text }).is_err() {
                        return Ending::Closed;
                    }
                }
                Verdict::Refuse => {
                    // Does not fit only while 64 frames already wait for a client that does not
                    // read them: the flood limit closes it soon enough.
                    shared.figures.line_refused("flood");
                    let _ = writer.push(outbox, wire::notice(outbox.dialect, SLOW_DOWN));
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
            Ok(Message::Close(Some(frame))) => going_away = frame.code == CloseCode::Away,
            Ok(_) => {}
            Err(err) => {
                return match ending_for(err) {
                    Ending::Closed if going_away => Ending::GoingAway,
                    ending => ending,
                }
            }
        }
    }
}
