//! The accept loop both ports run, and the one way either refuses a connection at once.
//!
//! Below the WebSocket listener and the page listener, above nothing but the per-address
//! table and the HTTP refusal's bytes: each port hands [`accept_each`] what to do with a
//! connection it admits.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::figures;
use crate::limits::addresses::{AddressSlot, AddressTable};
use crate::page;

/// Pause after `accept` fails for lack of file descriptors, so the loop does not spin
/// while the process is at its limit; connections that end free descriptors meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bytes per read of what a client sent before it is answered and closed: a request head
/// fits, and the buffer is small enough for the accepting thread's stack.
const REFUSAL_READ_BYTES: usize = 16 * 1024;

/// The most read of a connection about to be closed, so that a client that keeps sending
/// cannot hold the thread closing it.
const DISCARD_MOST_BYTES: usize = 64 * 1024;

/// What a listener checks before it hands a connection on.
pub struct Door<'a> {
    /// Names the port in the log.
    pub port: &'a str,
    /// Connections per address on this port.
    pub addresses: &'a Arc<AddressTable>,
    /// Behind a trusted proxy every peer is the proxy: nothing is counted at the door, and
    /// the address the proxy forwards is counted once the request is read.
    pub trust_proxy: bool,
    /// Counts the connections refused here (429), for the admin port.
    pub refused: &'a AtomicU64,
}

/// The accept loop of both ports. Hands `admit` each connection with its peer and its place
/// in its address's share; a connection over that share is answered 429 here instead.
pub fn accept_each(
    listener: &TcpListener,
    door: &Door,
    mut admit: impl FnMut(TcpStream, SocketAddr, Option<AddressSlot>),
) {
    for accepted in listener.incoming() {
        let socket = match accepted {
            Ok(socket) => socket,
            Err(err) => {
                eprintln!("threadchat: accept failed on the {}: {err}", door.port);
                if is_out_of_descriptors(&err) {
                    thread::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
        };
        let Ok(peer) = socket.peer_addr() else {
            continue; // already gone
        };
        let address = if door.trust_proxy {
            None
        } else {
            match door.addresses.take(peer.ip(), Instant::now()) {
                Ok(slot) => Some(slot),
                Err(refused) => {
                    refused.report(door.port);
                    figures::add(door.refused, 1);
                    refuse_at_once(&socket, 429, &refused.reason());
                    continue;
                }
            }
        };
        admit(socket, peer, address);
    }
}

fn is_out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Answers a connection with a one-line HTTP error and ends its stream, on the accepting
/// thread, which then drops it: no thread is started and nothing waits for the client.
pub fn refuse_at_once(socket: &TcpStream, status: u16, line: &str) {
    discard_arrived(socket);
    // A fresh socket's send buffer takes these few hundred bytes whole, at once.
    let _ = (&*socket).write_all(&page::refusal_bytes(status, line));
    let _ = socket.shutdown(Shutdown::Write);
}

/// Writes a whole answer, then ends the stream so the client reads it all before the end: what
/// arrived meanwhile is read and dropped first, since closing with input unread resets the
/// connection, and a reset can destroy the answer before the client has read it.
pub fn close_with(socket: &TcpStream, response: &[u8]) {
    if (&*socket).write_all(response).is_ok() {
        discard_arrived(socket);
        let _ = socket.shutdown(Shutdown::Write);
    }
}

/// Reads and drops what has arrived, without waiting for more; the socket is left
/// non-blocking, to be closed. Closing a socket with unread bytes resets the connection, and
/// a reset can destroy the answer before the client has read it.
pub fn discard_arrived(socket: &TcpStream) {
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    let mut unread = [0u8; REFUSAL_READ_BYTES];
    let mut left = DISCARD_MOST_BYTES;
    while left > 0 {
        match (&*socket).read(&mut unread) {
            Ok(0) => break,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break, // WouldBlock: nothing more yet
        }
    }
}
