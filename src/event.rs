//! What the room hears: the events client threads, writers, the cluster's threads and the
//! signal thread send it over one channel. The room handles them one at a time, in the
//! order they arrive, and that order is the chat's.

use std::sync::Arc;

use tungstenite::Utf8Bytes;

use crate::outbox::Outbox;

/// Identifies one connection for its whole life, before and after it has a nickname.
pub type ClientId = u64;

/// What the room is told.
pub enum Event {
    /// A handshake finished: give this connection a nickname and announce it.
    Join {
        id: ClientId,
        /// The client's address, for the join/leave log.
        from: String,
        outbox: Arc<Outbox>,
    },
    /// A text message arrived from a member.
    Say { id: ClientId, text: Utf8Bytes },
    /// A connection stopped being open, for whatever reason. Whoever ended it sends this,
    /// once: the reader, or the writer when it evicts the client or loses the socket.
    Leave { id: ClientId },
    /// Lines placed in the cluster's shared order, read back in that order.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Stream(Vec<Entry>),
    /// The cluster could not place an item; it certainly did not reach anyone.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Refused(Item, Refusal),
    /// Lines of the shared order were lost before this instance read them.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Gap,
    /// The other instances took this one for dead and announced its clients as left: they
    /// must reconnect, under new names.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Fenced,
    /// Redis lost the name this member held, and another client claimed it meanwhile: the
    /// member must come back under another.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    NameLost { id: ClientId },
    /// The server is stopping: say goodbye to everyone.
    Shutdown,
}

/// What the room asks a place in the order for.
#[derive(Debug)]
pub enum Item {
    /// A newcomer's join, under a nickname drawn for it.
    Join { id: ClientId, nickname: String },
    /// A line a member said, already prefixed with its nickname.
    Say { id: ClientId, line: String },
    /// A member's leave. Never refused: an order that cannot place it now keeps it. A shared
    /// order announces it only if the name is still that client's.
    Leave {
        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        id: ClientId,
        nickname: String,
    },
}

impl Item {
    /// The line everyone sees for this item: the wire contract's wording.
    pub fn line(&self) -> String {
        match self {
            Item::Join { nickname, .. } => format!(" .... {nickname} has joined."),
            Item::Say { line, .. } => line.clone(),
            Item::Leave { nickname, .. } => format!(" .... {nickname} has left."),
        }
    }

    /// The item as a placed line.
    pub fn into_entry(self) -> Entry {
        let line = self.line();
        let joined = match self {
            Item::Join { id, .. } => Some(id),
            _ => None,
        };
        Entry { line, joined }
    }
}

/// Why an item got no place.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Refusal {
    /// The nickname is held by another instance: draw another.
    Taken,
    /// The shared order is out of reach, or too busy to take more.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Unreachable,
}

/// One line in its place in the order.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub line: String,
    /// For the join of one of this instance's newcomers: which one.
    pub joined: Option<ClientId>,
}
