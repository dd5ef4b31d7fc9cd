//! What the room hears: the events client threads, writers and the signal thread send it
//! over one channel. The room handles them one at a time, in the order they arrive, and that
//! order is the chat's. (A cluster's news come on a channel of their own: `cluster::News`.)

use std::sync::Arc;

use tungstenite::Utf8Bytes;

use crate::dialect::{Position, Resume};
use crate::limits::seat::Seat;
use crate::send::outbox::Outbox;

/// Identifies one connection for its whole life, before and after it has a nickname.
pub type ClientId = u64;

/// What the room is told.
pub enum Event {
    /// A handshake finished: give this connection a nickname and announce it, or, for a
    /// session coming back, its own nickname again.
    Join {
        id: ClientId,
        /// The client's address, for the join/leave log.
        from: String,
        outbox: Arc<Outbox>,
        /// Its place in the server, which the room holds while it is a member or its session
        /// waits for it.
        seat: Arc<Seat>,
        /// What a client of the resume dialect asked for; `None` for a plain client.
        resume: Option<Resume>,
    },
    /// A text message arrived from a member.
    Say { id: ClientId, text: Utf8Bytes },
    /// A connection stopped being open, for whatever reason. Whoever ended it sends this,
    /// once: the reader, or the writer when it evicts the client or loses the socket.
    Leave { id: ClientId, how: Departure },
    /// The server is stopping: say goodbye to everyone.
    Shutdown,
    /// Tests only (debug builds, through the admin port): the room sleeps this long, as a
    /// stuck room would, so that `/healthz` can be seen to notice.
    #[cfg(debug_assertions)]
    Pause(std::time::Duration),
}

/// How a connection ended, as a resumable client's session sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Departure {
    /// A close from either side, an eviction, an error: it left.
    Left,
    /// Gone without a close (a reset, a silence): it may come back within the window.
    Lost,
    /// The client closed with 1001 "going away", which a browser sends for a reload as for a
    /// closed tab: it may come back within a short grace.
    GoingAway,
}

/// One line in its place in the order.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub line: String,
    /// For the join of one of this instance's newcomers: which one.
    pub joined: Option<ClientId>,
    /// Its place in a shared order (the stream's ID); `None` when this instance's own log
    /// is the order, which then numbers its lines itself.
    pub position: Option<Position>,
}

impl Entry {
    /// A line placed at once, by this instance's own log.
    pub fn placed(line: String, joined: Option<ClientId>) -> Entry {
        Entry {
            line,
            joined,
            position: None,
        }
    }
}
