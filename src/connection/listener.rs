//! The WebSocket listener: the cookbook's `chat-server`, as a blocking accept loop.
//!
//! Every accepted socket gets a thread of its own that runs the handshake and then
//! starts the client's reader ([`client::handle_new_connection`]). The loop itself never
//! waits on a client, so a thousand half-finished handshakes do not delay the next one.
//! An address that already holds its share is answered 429 right here, without a thread.
//! The page listener runs the same loop ([`accept_each`]) and refuses the same way.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::connection::client::{self, UPGRADE_STACK_BYTES};
use crate::context::Shared;
use crate::limits::addresses::{AddressSlot, AddressTable};
use crate::limits::seat::ConnectionCount;
use crate::page;
use crate::sys;

/// Pause after `accept` fails for lack of file descriptors, so the loop does not spin
/// while the process is at its limit; connections that end free descriptors meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bytes per read of what a client sent before it is answered and closed: a request head
/// fits, and the buffer is small enough for the accepting thread's stack.
const REFUSAL_READ_BYTES: usize = 16 * 1024;

/// The most read of a connection about to be closed, so that a client that keeps sending
/// cannot hold the thread closing it.
const DISCARD_MOST_BYTES: usize = 64 * 1024;

/// Accepts connections for as long as the process runs.
pub fn run(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0;
    let door = Door {
        port: "WebSocket port",
        addresses: &shared.addresses,
        trust_proxy: shared.config.trust_proxy,
    };
    accept_each(&listener, &door, |socket, peer, address| {
        next_id += 1;
        let id = next_id;
        // Over the limit, the connection still gets a thread, but only long enough to
        // read its request and answer 503: a client deserves a reason, not a reset.
        let over_capacity = shared.connections.fetch_add(1, Ordering::AcqRel) >= shared.max_clients;
        let count = ConnectionCount(shared.connections.clone());
        let shared = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("upgrade-{id}"))
            .stack_size(UPGRADE_STACK_BYTES)
            .spawn(move || {
                client::handle_new_connection(
                    &shared,
                    count,
                    id,
                    socket,
                    peer,
                    over_capacity,
                    address,
                );
                sys::release_unused_stack();
            });
        // On failure the closure is dropped, and the count with it.
        if let Err(err) = spawned {
            eprintln!("threadchat: no thread for {peer}: {err}");
        }
    });
}

/// What a listener checks before it hands a connection on.
pub struct Door<'a> {
    /// Names the port in the log.
    pub port: &'a str,
    /// Connections per address on this port.
    pub addresses: &'a Arc<AddressTable>,
    /// Behind a trusted proxy every peer is the proxy: nothing is counted at the door, and
    /// the address the proxy forwards is counted once the request is read.
    pub trust_proxy: bool,
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
