//! The byte stream under tungstenite: reads from the socket, writes into the outbox.
//!
//! The reader thread never writes to an open connection. tungstenite's own replies (pongs,
//! close replies) are queued as whole frames in the client's [`Outbox`], and its writer
//! thread places them between the room's lines. So frames never interleave on the wire,
//! and one tungstenite state machine sees the whole conversation.
//!
//! A read interrupted by a signal is tried again. After the process is stopped (Ctrl-Z, a
//! debugger, `docker pause`) and continued, Linux fails a blocking `recv` that has a
//! timeout with `EINTR` (signal(7)); that is no reason to drop a client.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use crate::send::outbox::Outbox;
use crate::send::writer::Writer;
use crate::trace::{Direction, FrameTrace, Trace};
use crate::wire::Frame;

/// The stream tungstenite reads and writes.
///
/// Reads come straight from the socket. Writes go to the socket during the handshake
/// and, once the reader is running, into the client's outbox as whole frames.
pub struct ClientStream {
    socket: Arc<TcpStream>,
    /// Once the reader runs: the client's outbox, and the writer that sends it.
    outbox: Option<(Arc<Outbox>, Arc<Writer>)>,
    /// The whole handshake must finish by then; a per-read timeout alone would let a
    /// client that sends one byte every few seconds hold the connection for ever.
    handshake_deadline: Option<Instant>,
    /// With `--trace`: decodes what the client sends, frame by frame.
    frames_in: Option<FrameTrace>,
    trace: Trace,
}

impl ClientStream {
    /// A stream for the handshake, which must be done by `deadline`.
    pub fn new(socket: Arc<TcpStream>, deadline: Instant) -> ClientStream {
        ClientStream {
            socket,
            outbox: None,
            handshake_deadline: Some(deadline),
            frames_in: None,
            trace: Trace::default(),
        }
    }

    /// The upgrade is done: reads now wait as long as the socket's own timeout says.
    pub fn handshake_done(&mut self) {
        self.handshake_deadline = None;
    }

    /// Called once the handshake is done: from now on writes go to the outbox, and what
    /// is read is WebSocket frames.
    pub fn start_queueing(&mut self, outbox: Arc<Outbox>, writer: Arc<Writer>, trace: Trace) {
        self.outbox = Some((outbox, writer));
        self.frames_in = trace.frames(Direction::In);
        self.trace = trace;
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = loop {
            if let Some(deadline) = self.handshake_deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                self.socket.set_read_timeout(Some(left))?;
            }
            match (&*self.socket).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.trace_interrupted(),
                read => break read?,
            }
        };
        self.trace_read(&buf[..n]);
        Ok(n)
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.outbox {
            None => loop {
                match (&*self.socket).write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    written => break written,
                }
            },
            // tungstenite hands over whole frames, so each chunk stays in one piece.
            Some((outbox, writer)) => match writer.push(outbox, Frame::from(buf)) {
                Ok(()) => Ok(buf.len()),
                Err(why) => Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("{why:?}"),
                )),
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.outbox {
            None => (&*self.socket).flush(),
            Some(_) => Ok(()),
        }
    }
}

mod traced;
