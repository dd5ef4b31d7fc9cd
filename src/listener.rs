//! The WebSocket listener: the cookbook's `chat-server`, as a blocking accept loop.
//!
//! Every accepted socket gets a thread of its own that runs the handshake and then
//! starts the client's reader ([`client::handle_new_connection`]). The loop itself never
//! waits on a client, so a thousand half-finished handshakes do not delay the next one.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::client::{self, UPGRADE_STACK_BYTES};
use crate::server::{ConnectionCount, Shared};
use crate::sys;

/// Pause after `accept` fails for lack of file descriptors, so the loop does not spin
/// while the process is at its limit; connections that end free descriptors meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections for as long as the process runs.
pub fn run(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0;
    for accepted in listener.incoming() {
        let socket = match accepted {
            Ok(socket) => socket,
            Err(err) => {
                eprintln!("threadchat: accept failed: {err}");
                if is_out_of_descriptors(&err) {
                    thread::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
        };
        let Ok(peer) = socket.peer_addr() else {
            continue; // already gone
        };
        next_id += 1;
        let id = next_id;
        // Over the limit, the connection still gets a thread, but only long enough to
        // read its request and answer 503: a client deserves a reason, not a reset.
        let over_capacity = shared.connections.fetch_add(1, Ordering::AcqRel) >= shared.max_clients;
        let count = ConnectionCount(shared.clone());
        let spawned = thread::Builder::new()
            .name(format!("upgrade-{id}"))
            .stack_size(UPGRADE_STACK_BYTES)
            .spawn(move || {
                client::handle_new_connection(count, id, socket, peer, over_capacity);
                sys::release_unused_stack();
            });
        // On failure the closure is dropped, and the count with it.
        if let Err(err) = spawned {
            eprintln!("threadchat: no thread for {peer}: {err}");
        }
    }
}

fn is_out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
