//! A client's place in the server, counted from the accept to the last thing that holds it:
//! its threads, and the room while its session waits. Below the listener, above nothing but
//! the per-address table.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::limits::addresses::AddressSlot;

/// Counts a connection as held until the last thread serving it has ended, however it
/// ends. It moves from the upgrade thread into the client's [`Seat`].
pub struct ConnectionCount(pub Arc<AtomicUsize>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client's place in the server: one of `--max-clients`, and one of its address's share.
///
/// The connection's reader holds it, and so does the room while the client is a member or
/// its session waits for it: a detached session keeps its name, so it keeps its place too.
/// Otherwise a script that opens sessions and drops them could hold every name while
/// holding no connection. The place is given back when the last of them lets go.
pub struct Seat {
    _count: ConnectionCount,
    _address: Option<AddressSlot>,
}

impl Seat {
    pub fn new(count: ConnectionCount, address: Option<AddressSlot>) -> Arc<Seat> {
        Arc::new(Seat {
            _count: count,
            _address: address,
        })
    }
}
