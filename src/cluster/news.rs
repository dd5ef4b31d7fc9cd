//! What passes between the room and the cluster's threads: the items the room hands the
//! publisher, and the news the cluster sends back on a channel of its own (lines read back
//! from the stream, refusals, lost lines, a fence, a lost name). A plain build has none of
//! this: its order places every line the moment the room asks.

use std::time::Duration;

use crate::dialect::Position;
use crate::event::{ClientId, Entry};
use crate::wire;

/// What the room asks the shared order to place.
#[derive(Debug)]
pub enum Item {
    /// A newcomer's join, under a nickname drawn for it; with the token of the session it
    /// opens, for a client of the resume dialect (Redis keeps the session).
    Join {
        id: ClientId,
        nickname: String,
        session: Option<String>,
    },
    /// A line a member said, already prefixed with its nickname.
    Say { id: ClientId, line: String },
    /// A member's leave. Never refused: the publisher keeps it until Redis takes it. It is
    /// announced only if the name is still held by `id`, the connection that joined under
    /// it, and it ends that session.
    Leave { id: ClientId, nickname: String },
    /// A resumable member dropped without a close. Its session waits for it, on any
    /// instance, until the window ends; then its leave is placed. Kept like a leave until
    /// Redis takes it.
    Detach {
        id: ClientId,
        nickname: String,
        /// How long it waits for its client.
        wait: Duration,
        /// The first line its session may be owed (its connection had been handed the
        /// ones before, less what may still have been on its way); `None` if unknown.
        owed: Option<Position>,
    },
    /// A client presents the token of a session. Placed, it comes back through the stream
    /// as [`Streamed::Resumed`]; refused, the session is unknown.
    Resume { id: ClientId, token: String },
}

impl Item {
    /// The line everyone sees for this item: the wire contract's wording. A resume has
    /// none: nobody hears of it.
    pub fn line(&self) -> String {
        match self {
            Item::Join { nickname, .. } => wire::around(wire::JOINED, nickname),
            Item::Say { line, .. } => line.clone(),
            Item::Leave { nickname, .. } | Item::Detach { nickname, .. } => {
                wire::around(wire::LEFT, nickname)
            }
            Item::Resume { .. } => String::new(),
        }
    }
}

/// Why an item got no place.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Refusal {
    /// The nickname is held by another instance: draw another.
    Taken,
    /// The shared order is out of reach, or too busy to take more.
    Unreachable,
    /// No session has that token (never had, expired, or Redis lost it).
    Unknown,
}

/// The publisher's answer to an item handed to it.
pub enum Placement {
    /// Taken: the answer comes later, as news (the line read back, or a refusal).
    Later,
    /// Not placed, and it will not be.
    Refused(Item, Refusal),
}

/// What the cluster tells the room, in the order it learns it.
pub enum News {
    /// Entries of the shared order, read back in that order.
    Stream(Vec<Streamed>),
    /// The cluster could not place an item; it certainly did not reach anyone.
    Refused(Item, Refusal),
    /// Lines of the shared order were lost before this instance read them.
    Gap,
    /// The other instances took this one for dead and announced its clients as left: they
    /// must reconnect, under new names.
    Fenced,
    /// Redis lost the name this member held, and another client claimed it meanwhile: the
    /// member must come back under another.
    NameLost { id: ClientId },
}

/// One entry of the stream as the room takes it.
#[derive(Debug, PartialEq)]
pub enum Streamed {
    /// A line in its place.
    Line(Entry),
    /// Not a line but a session that came back, somewhere in the cluster.
    Resumed(Resumed),
}

/// A session resumed on some instance: its name moved from one connection to another,
/// unannounced. The room concerned by either end acts on it; the others ignore it.
#[derive(Debug, PartialEq)]
pub struct Resumed {
    pub nickname: String,
    /// This instance's connection that takes the session, if it is one of ours.
    pub by: Option<ClientId>,
    /// This instance's connection that had it, if it was one of ours.
    pub from: Option<ClientId>,
    /// The first line the session may get back: its own join, or later where a
    /// connection of it had been handed the lines before.
    pub floor: Option<Position>,
}
