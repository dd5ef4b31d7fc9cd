//! The accept loop both ports run.
//!
//! Below the WebSocket listener and the page listener, above nothing but the per-address
//! table: each port hands [`accept_each`] what to do with a connection it admits. One over
//! its address's share is refused at once, on this thread (`closing.rs`).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::closing::refuse_at_once;
use crate::figures;
use crate::limits::addresses::{AddressSlot, AddressTable};

/// Pause after `accept` fails for lack of file descriptors, so the loop does not spin
/// while the process is at its limit; connections that end free descriptors meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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
