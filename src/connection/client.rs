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

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error, Message, WebSocket};

use crate::connection::handshake::handshake;
use crate::connection::socket::ClientStream;
use crate::context::Shared;
use crate::event::{ClientId, Departure, Event, Resume};
use crate::limits::addresses::AddressSlot;
use crate::limits::rate::{RateLimit, Verdict};
use crate::limits::seat::{ConnectionCount, Seat};
use crate::send::outbox::{Outbox, Phase};
use crate::send::writer::ending::CLOSE_GRACE;
use crate::send::writer::Writer;
use crate::sys;
use crate::trace::Trace;
use crate::wire::{self, Dialect, Frame};

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
    // A deadline, not polling: an idle reader sleeps in `read` until a frame or a pong
    // arrives, and the room pings more often than `pong_timeout`. Without pings there is
    // nothing to answer, so silence is no sign of a dead peer and there is no deadline.
    let silence = shared
        .config
        .ping_interval
        .map(|_| shared.config.pong_timeout);
    if socket.set_read_timeout(silence).is_err() {
        return;
    }
    // Without pings, the kernel's keep-alive probes find a peer that vanished (a laptop
    // lid closed, a NAT that forgot it): about two minutes of silence, then six probes.
    if silence.is_none() && sys::keep_alive(&socket, 60, 10, 6).is_err() {
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

/// The reader's part of the end: the close frame, if it is ours to send, then the drain.
///
/// Out of line, like [`ending_for`]: what only the end of a connection needs must not deepen
/// the reader's frame for its whole life, since each idle reader keeps every stack page its
/// reads have touched. With these and the boxed WebSocket, an idle reader's read sits 2.3 KB
/// deep and its stack holds 8 KiB; with the three inlined, 3.7 KB and 12 KiB (gdb, smaps).
#[inline(never)]
fn end_connection(end: &ReaderEnd, ending: Ending, shared: &Shared) {
    shared.figures.ended(match &ending {
        Ending::Closed => "close",
        Ending::EndedByWriter => "",
        Ending::GoingAway => "going_away",
        Ending::Lost => "lost",
        Ending::Close(wire::CLOSE_GOING_AWAY, _) => "silence",
        Ending::Close(wire::CLOSE_TOO_BIG, _) => "too_big",
        Ending::Close(wire::CLOSE_INVALID_DATA, _) => "invalid_utf8",
        Ending::Close(wire::CLOSE_POLICY, _) => "flood",
        Ending::Close(_, _) => "protocol_error",
    });
    let (last, how) = match ending {
        Ending::Closed | Ending::EndedByWriter => (None, Departure::Left),
        Ending::GoingAway => (None, Departure::GoingAway),
        Ending::Lost => (None, Departure::Lost),
        Ending::Close(code, reason) => {
            let what = format!("closing with {code} {reason:?}");
            shared.trace.decision(end.outbox.label(), &what);
            // Silence is how a sleeping phone or a lost network looks: it may come back.
            let how = match code {
                wire::CLOSE_GOING_AWAY => Departure::Lost,
                _ => Departure::Left,
            };
            (Some(wire::close_frame(code, &reason)), how)
        }
    };
    end.close(last, how);
    // The writer ends the drain once the client has everything and the grace has passed, or
    // a write timeout after the close frame went into the socket, which may itself wait for a
    // write timeout; this bound holds should no writer ever get the client. Ending it sooner
    // would close the socket with input unread, a reset that overtakes the close frame.
    drain(end.outbox, 2 * shared.config.write_timeout + CLOSE_GRACE);
}

/// The reader's end of the connection, however the reader stops (a close, an error, a
/// panic): the open phase ends, the room hears of the leave if the reader is the one who
/// ended it, and the writer learns that nobody reads the socket any more.
struct ReaderEnd<'a> {
    id: ClientId,
    outbox: &'a Arc<Outbox>,
    writer: &'a Writer,
    events: &'a Sender<Event>,
}

impl ReaderEnd<'_> {
    /// Ends the open phase with `last` as the final frame, unless it has ended already.
    fn close(&self, last: Option<Frame>, how: Departure) {
        if self.writer.close(self.outbox, last) {
            let _ = self.events.send(Event::Leave { id: self.id, how });
        }
    }
}

impl Drop for ReaderEnd<'_> {
    fn drop(&mut self) {
        self.close(None, Departure::Left);
        self.outbox.reader_done();
    }
}

/// How a connection ended from the reader's side.
#[derive(Debug, PartialEq)]
enum Ending {
    /// The peer closed: it left.
    Closed,
    /// The writer ended it (and counted why): it left.
    EndedByWriter,
    /// The peer closed with 1001 "going away": a browser's reload, or a closed tab.
    GoingAway,
    /// The connection is gone without a close frame (a reset, the end of the stream).
    Lost,
    /// We close the connection with this code and reason.
    Close(u16, String),
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

/// Maps a tungstenite error to the close code RFC 6455 gives for it.
#[cold]
#[inline(never)]
fn ending_for(err: Error) -> Ending {
    let close = |code, reason: &str| Ending::Close(code, reason.to_owned());
    match err {
        Error::Capacity(_) => close(wire::CLOSE_TOO_BIG, "message too big"),
        Error::Utf8(_) => close(wire::CLOSE_INVALID_DATA, "invalid UTF-8"),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::Lost,
        Error::Protocol(p) => close(wire::CLOSE_PROTOCOL, &short_reason(&p.to_string())),
        Error::Io(e) if is_timeout(&e) => close(wire::CLOSE_GOING_AWAY, "silent too long"),
        Error::Io(_) => Ending::Lost,
        // The close handshake is done, or tungstenite refuses to go on after its close.
        _ => Ending::Closed,
    }
}

/// The first message of the resume dialect, `new` or `resume <token> <position>`, within the
/// handshake's deadline. Other text is answered with close 1008 saying what was expected, a
/// binary message with 1003, as it would be later in the connection.
fn first_message(
    ws: &mut WebSocket<ClientStream>,
    trace: Trace,
    peer: SocketAddr,
) -> Option<Resume> {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let resume = Resume::parse(&text);
                // Told from what was understood, never from the text itself: a malformed
                // message may still hold a token.
                let told = match &resume {
                    Some(Resume::New) => "new".to_owned(),
                    Some(Resume::Back { position, .. }) => format!("resume <token> {position}"),
                    None => format!("neither new nor resume ({} bytes)", text.len()),
                };
                trace.decision(peer, &format!("first message: {told}"));
                if resume.is_none() {
                    let expected = CloseFrame {
                        code: CloseCode::Policy,
                        reason: "expected new, or resume <token> <position>".into(),
                    };
                    let _ = ws.close(Some(expected));
                    let _ = ws.flush();
                }
                return resume;
            }
            Ok(Message::Binary(_)) => {
                trace.decision(peer, "first message: binary");
                let refused = CloseFrame {
                    code: CloseCode::Unsupported,
                    reason: "text messages only".into(),
                };
                let _ = ws.close(Some(refused));
                let _ = ws.flush();
                return None;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            _ => return None,
        }
    }
}

/// A close reason must fit in a control frame: 125 bytes less the 2-byte code.
fn short_reason(reason: &str) -> String {
    reason[..reason.floor_char_boundary(123)].to_owned()
}

/// Reads and drops what the client still sends until it ends its side, its writer shuts the
/// socket (once the client has had everything and the close grace), or `most` has passed. A
/// socket closed with input unread is reset, and the reset can overtake the close frame on
/// its way to the client.
fn drain(outbox: &Outbox, most: Duration) {
    let socket = &*outbox.socket;
    let deadline = Instant::now() + most;
    let mut sink = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&*socket).read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::send::log::Log;
    use crate::trace::Trace;
    use std::net::TcpListener;

    fn connection(events: Sender<Event>) -> (Arc<Outbox>, Arc<Writer>, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let log = Log::new(1 << 20);
        let logs = [log.reader(), log.reader()];
        let writer = Writer::spawn(0, logs, events, CLOSE_GRACE, Trace::new(false));
        let outbox = Outbox::new(
            Arc::new(socket),
            "here".into(),
            0,
            Dialect::Plain,
            log.reader(),
        );
        (Arc::new(outbox), writer.unwrap(), log)
    }

    #[test]
    fn a_reader_that_panics_still_reports_its_leave_once() {
        let (events, heard) = crossbeam_channel::unbounded();
        let (outbox, writer, _log) = connection(events.clone());
        let reader_outbox = outbox.clone();
        let outcome = std::thread::spawn(move || {
            let end = ReaderEnd {
                id: 7,
                outbox: &reader_outbox,
                writer: &writer,
                events: &events,
            };
            end.close(None, Departure::Left);
            panic!("a bug in the reader");
        })
        .join();
        assert!(outcome.is_err());
        assert!(matches!(heard.try_recv(), Ok(Event::Leave { id: 7, .. })));
        assert!(heard.try_recv().is_err(), "the leave is reported once");
        assert_ne!(outbox.phase(), Phase::Open);
    }

    #[test]
    fn a_reader_ended_by_a_panic_alone_still_reports_its_leave() {
        let (events, heard) = crossbeam_channel::unbounded();
        let (outbox, writer, _log) = connection(events.clone());
        let outcome = std::thread::spawn(move || {
            let _end = ReaderEnd {
                id: 8,
                outbox: &outbox,
                writer: &writer,
                events: &events,
            };
            panic!("a bug in the reader");
        })
        .join();
        assert!(outcome.is_err());
        assert!(matches!(
            heard.try_recv(),
            Ok(Event::Leave {
                id: 8,
                how: Departure::Left
            })
        ));
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let short = short_reason(&long);
        assert!(short.len() <= 123);
        assert!(long.starts_with(&short));
    }
}
