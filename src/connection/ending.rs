//! How a reader's connection ends, off the path a message takes: the close frame, if it is
//! the reader's to send, the leave the room hears once whoever ends it (a close, an error, a
//! panic), the figures of why, and the drain before the socket goes. The reader
//! (`client.rs`) reads until [`Ending`] says why it stopped, then calls [`end_connection`].

use std::io;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use tungstenite::error::ProtocolError;
use tungstenite::Error;

use crate::closing::drain;
use crate::context::Shared;
use crate::event::{ClientId, Departure, Event};
use crate::send::outbox::Outbox;
use crate::send::writer::ending::CLOSE_GRACE;
use crate::send::writer::Writer;
use crate::wire::{self, Frame};

/// The reader's part of the end: the close frame, if it is ours to send, then the drain.
///
/// Out of line, like [`ending_for`]: what only the end of a connection needs must not deepen
/// the reader's frame for its whole life, since each idle reader keeps every stack page its
/// reads have touched. With these and the boxed WebSocket, an idle reader's read sits 2.3 KB
/// deep and its stack holds 8 KiB; with the three inlined, 3.7 KB and 12 KiB (gdb, smaps).
#[inline(never)]
pub(super) fn end_connection(end: &ReaderEnd, ending: Ending, shared: &Shared) {
    let cause = match &ending {
        Ending::Closed => "close",
        Ending::EndedByWriter => "",
        Ending::GoingAway => "going_away",
        Ending::Lost => "lost",
        Ending::Close(wire::CLOSE_GOING_AWAY, _) => "silence",
        Ending::Close(wire::CLOSE_TOO_BIG, _) => "too_big",
        Ending::Close(wire::CLOSE_INVALID_DATA, _) => "invalid_utf8",
        Ending::Close(wire::CLOSE_POLICY, _) => "flood",
        Ending::Close(_, _) => "protocol_error",
    };
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
    // Counted by whoever ended the open phase: a writer that evicted the client or timed it
    // out while the reader was on its way here has counted its own cause.
    if end.close(last, how) {
        shared.figures.ended(cause);
    }
    // The writer ends the drain once the client has everything and the grace has passed, or
    // a write timeout after the close frame went into the socket, which may itself wait for a
    // write timeout; this bound holds should no writer ever get the client. Ending it sooner
    // would close the socket with input unread, a reset that overtakes the close frame.
    let most = 2 * shared.config.write_timeout + CLOSE_GRACE;
    drain(&end.outbox.socket, Instant::now() + most);
}

/// The reader's end of the connection, however the reader stops (a close, an error, a
/// panic): the open phase ends, the room hears of the leave if the reader is the one who
/// ended it, and the writer learns that nobody reads the socket any more.
pub(super) struct ReaderEnd<'a> {
    pub(super) id: ClientId,
    pub(super) outbox: &'a Arc<Outbox>,
    pub(super) writer: &'a Writer,
    pub(super) events: &'a Sender<Event>,
}

impl ReaderEnd<'_> {
    /// Ends the open phase with `last` as the final frame, unless it has ended already.
    /// Returns whether this call ended it.
    fn close(&self, last: Option<Frame>, how: Departure) -> bool {
        let ended = self.writer.close(self.outbox, last);
        if ended {
            let _ = self.events.send(Event::Leave { id: self.id, how });
        }
        ended
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
pub(super) enum Ending {
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

/// Maps a tungstenite error to the close code RFC 6455 gives for it.
#[cold]
#[inline(never)]
pub(super) fn ending_for(err: Error) -> Ending {
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

/// A close reason must fit in a control frame: 125 bytes less the 2-byte code.
fn short_reason(reason: &str) -> String {
    reason[..reason.floor_char_boundary(123)].to_owned()
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
    use crate::send::outbox::Phase;
    use crate::trace::Trace;
    use crate::wire::Dialect;
    use std::net::TcpListener;
    use std::net::TcpStream;

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

    /// The context a reader's end reads: its figures, the trace and the drain's bound.
    fn shared(events: Sender<Event>, writer: &Arc<Writer>, log: &Log) -> Shared {
        Shared {
            config: crate::config::Config::default(),
            events,
            connections: Default::default(),
            max_clients: 1,
            addresses: crate::limits::addresses::AddressTable::new(0),
            page_url: String::new(),
            trace: Trace::new(false),
            writers: vec![writer.clone()],
            logs: [log.reader(), log.reader()],
            figures: Default::default(),
        }
    }

    #[test]
    fn an_ending_is_counted_once_by_whoever_ended_the_connection() {
        let closed = |shared: &Shared| crate::figures::get(&shared.figures.endings[0]);
        for writer_first in [false, true] {
            let (events, heard) = crossbeam_channel::unbounded();
            let (outbox, writer, log) = connection(events.clone());
            let shared = shared(events.clone(), &writer, &log);
            if writer_first {
                // An eviction: the writer ends it and counts its own cause, while the reader,
                // which has just read the client's close, is on its way to its end.
                let bye = wire::close_frame(wire::CLOSE_POLICY, "too slow");
                assert!(writer.close(&outbox, Some(bye)));
            }
            // Nothing to drain: the test's peer never reads or closes.
            let _ = outbox.socket.shutdown(std::net::Shutdown::Both);
            let end = ReaderEnd {
                id: 9,
                outbox: &outbox,
                writer: &writer,
                events: &events,
            };
            end_connection(&end, Ending::Closed, &shared);
            assert_eq!(
                closed(&shared),
                u64::from(!writer_first),
                "writer first: {writer_first}"
            );
            let leaves = heard.try_iter().count();
            assert_eq!(leaves, usize::from(!writer_first));
        }
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
