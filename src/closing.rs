//! Closing a connection so that the client reads what it was sent last: the one drain before
//! a close, and the two ways a port answers and ends a connection on the thread that has it.
//!
//! Off the path a message takes: the accept loop refuses with [`refuse_at_once`], the page
//! and admin ports end each answer with [`close_with`], and a client's reader ends with
//! [`drain`]. All three read what the client sent before the socket is closed: closing a
//! socket with input unread resets the connection, and the reset can overtake the last bytes
//! on their way and destroy them before the client has read them.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

use crate::page;

/// Bytes per read of what a client sent before its close: a page, on the stack of whichever
/// thread closes it (an accepting thread, or a reader at the end of its life).
const DRAIN_READ_BYTES: usize = 4 * 1024;

/// The most read once the deadline has passed, so that a client that keeps sending cannot
/// hold the thread closing it.
const DRAIN_AFTER_DEADLINE_BYTES: usize = 64 * 1024;

/// Reads and drops what the client sends until it ends its side, the socket is shut (a
/// writer shuts a closed client's socket once it has had everything and the close grace), or
/// `deadline` passes, then what has already arrived, without waiting. An accepting thread,
/// which must not wait, passes now; a reader, which waits for the client's close, passes the
/// latest the writer can take to end it. Once past the deadline the socket is left
/// non-blocking, to be closed.
pub fn drain(socket: &TcpStream, deadline: Instant) {
    let mut sink = [0u8; DRAIN_READ_BYTES];
    let mut left_after_deadline = DRAIN_AFTER_DEADLINE_BYTES;
    while left_after_deadline > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        let waiting = if wait.is_zero() {
            socket.set_nonblocking(true)
        } else {
            socket.set_read_timeout(Some(wait))
        };
        if waiting.is_err() {
            return;
        }
        match (&*socket).read(&mut sink) {
            Ok(0) => return,
            Ok(n) if wait.is_zero() => left_after_deadline = left_after_deadline.saturating_sub(n),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return, // WouldBlock past the deadline: nothing more yet
        }
    }
}

/// Answers a connection with a one-line HTTP error and ends its stream, on the accepting
/// thread, which then drops it: no thread is started and nothing waits for the client.
pub fn refuse_at_once(socket: &TcpStream, status: u16, line: &str) {
    drain(socket, Instant::now());
    // A fresh socket's send buffer takes these few hundred bytes whole, at once.
    let _ = (&*socket).write_all(&page::refusal_bytes(status, line));
    let _ = socket.shutdown(Shutdown::Write);
}

/// Writes a whole answer, then ends the stream so the client reads it all before the end:
/// what arrived meanwhile is read and dropped first.
pub fn close_with(socket: &TcpStream, response: &[u8]) {
    if (&*socket).write_all(response).is_ok() {
        drain(socket, Instant::now());
        let _ = socket.shutdown(Shutdown::Write);
    }
}
