//! What the room hears: the events client threads, writers, the stream thread and the
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
    /// Lines the stream thread read back from the cluster, in the cluster's order.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Stream(Vec<Entry>),
    /// The server is stopping: say goodbye to everyone.
    Shutdown,
}

/// One line as the cluster's stream carries it.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Debug)]
pub struct Entry {
    /// The stream's ID for it, which orders it among everyone's lines.
    pub id: String,
    pub line: String,
    /// For a join line: the instance and the client it announces.
    pub joined: Option<(String, ClientId)>,
}
