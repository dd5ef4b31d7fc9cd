//! The WebSocket listener: the cookbook's `chat-server`, as a blocking accept loop.
//!
//! Every accepted socket gets a thread of its own that runs the handshake and then
//! starts the client's reader ([`client::handle_new_connection`]). The loop itself never
//! waits on a client, so a thousand half-finished handshakes do not delay the next one.
//! An address that already holds its share is answered 429 by the loop both ports share
//! ([`accept_each`]), without a thread.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use crate::accept::{accept_each, Door};
use crate::connection::client;
use crate::connection::stacks::UPGRADE_STACK_BYTES;
use crate::context::Shared;
use crate::limits::seat::ConnectionCount;
use crate::sys;

/// Accepts connections for as long as the process runs.
pub fn run(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0;
    let door = Door {
        port: "WebSocket port",
        addresses: &shared.addresses,
        trust_proxy: shared.config.trust_proxy,
        refused: shared.figures.refused_at(429),
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
