//! What the room hears: the events client threads, writers, the cluster's threads and the
//! signal thread send it over one channel. The room handles them one at a time, in the
//! order they arrive, and that order is the chat's.

use std::sync::Arc;

use tungstenite::Utf8Bytes;

use crate::limits::seat::Seat;
use crate::send::outbox::Outbox;
use crate::wire;

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

/// What a client of the resume dialect asks for with its first message.
#[derive(Debug, PartialEq)]
pub enum Resume {
    /// `new`: a session of its own.
    New,
    /// `resume <token> <position>`: its session again, from after the line at `position`.
    Back { token: String, position: Position },
}

impl Resume {
    /// Reads a first message: `new`, or `resume <token> <position>`.
    pub fn parse(message: &str) -> Option<Resume> {
        let mut words = message.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("new"), None, _, _) => Some(Resume::New),
            (Some("resume"), Some(token), Some(position), None) => Some(Resume::Back {
                token: token.to_owned(),
                position: position.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// A line's place in the order everyone sees, as resumable clients are told it: a count of
/// lines on a single instance (`17`), the stream's ID in a cluster (`1700000000000-3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u64, pub u64);

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position(0, n) => write!(f, "{n}"),
            Position(ms, n) => write!(f, "{ms}-{n}"),
        }
    }
}

impl std::str::FromStr for Position {
    type Err = ();

    fn from_str(text: &str) -> Result<Position, ()> {
        let number = |t: &str| t.parse::<u64>().map_err(drop);
        match text.split_once('-') {
            Some((ms, n)) => Ok(Position(number(ms)?, number(n)?)),
            None => Ok(Position(0, number(text)?)),
        }
    }
}

/// What the room asks a place in the order for.
#[derive(Debug)]
pub enum Item {
    /// A newcomer's join, under a nickname drawn for it; with the token of the session it
    /// opens, for a client of the resume dialect (a shared order keeps the session).
    Join {
        id: ClientId,
        nickname: String,
        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        session: Option<String>,
    },
    /// A line a member said, already prefixed with its nickname.
    Say { id: ClientId, line: String },
    /// A member's leave. Never refused: an order that cannot place it now keeps it. A shared
    /// order announces it only if the name is still that client's, and ends its session.
    Leave {
        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        id: ClientId,
        nickname: String,
    },
    /// Shared order only: a resumable member dropped without a close. Its session waits
    /// for it, on any instance, until the window ends; then its leave is placed. Kept like
    /// a leave until the order takes it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Detach {
        id: ClientId,
        nickname: String,
        /// How long it waits for its client.
        wait: std::time::Duration,
        /// The first line its session may be owed (its connection had been handed the
        /// ones before, less what may still have been on its way); `None` if unknown.
        owed: Option<Position>,
    },
    /// Shared order only: a client presents the token of a session. Placed, it comes back
    /// through the stream as an [`Entry`] with `resumed`; refused, the session is unknown.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
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

    /// The item as a placed line.
    pub fn into_entry(self) -> Entry {
        let line = self.line();
        let joined = match self {
            Item::Join { id, .. } => Some(id),
            _ => None,
        };
        Entry {
            line,
            joined,
            position: None,
            resumed: None,
        }
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
    /// No session has that token (never had, expired, or Redis lost it).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Unknown,
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
    /// Not a line but a session that came back, somewhere in the cluster.
    pub resumed: Option<Resumed>,
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

/// The answer to a request for a place.
pub enum Placement {
    /// Placed at once: here is the line to append.
    Now(Entry),
    /// The answer comes later, as an event: `Stream` with the line, or `Refused`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Later,
    /// Not placed, and it will not be.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Refused(Item, Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_messages_of_the_resume_dialect() {
        assert_eq!(Resume::parse("new"), Some(Resume::New));
        assert_eq!(
            Resume::parse("resume 0123abcd 17"),
            Some(Resume::Back {
                token: "0123abcd".into(),
                position: Position(0, 17)
            })
        );
        assert_eq!(
            Resume::parse("resume t 1700000000000-3").map(|r| match r {
                Resume::Back { position, .. } => position,
                Resume::New => Position::default(),
            }),
            Some(Position(1_700_000_000_000, 3))
        );
        for bad in [
            "",
            "hello",
            "new please",
            "resume",
            "resume t",
            "resume t x",
            "resume t 1 2",
        ] {
            assert_eq!(Resume::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn positions_print_as_they_are_read_and_order_as_lines_do() {
        for text in ["17", "1700000000000-3"] {
            assert_eq!(text.parse::<Position>().unwrap().to_string(), text);
        }
        assert!(Position(1, 0) > Position(0, 99));
        assert!(Position(5, 2) > Position(5, 1));
    }
}
