//! What the room hears: the events client threads, writers and the signal thread send it
//! over one channel. The room handles them one at a time, in the order they arrive, and that
//! order is the chat's. (A cluster's news come on a channel of their own: `cluster::News`.)

use std::sync::Arc;

use tungstenite::Utf8Bytes;

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
