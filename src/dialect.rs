//! The resume dialect's words, which only its clients speak: the first message, `new` or
//! `resume <token> <position>`, and the position of a line, as those clients are told it.
//! A plain client never meets them; the connection reads the first message
//! (`connection/first_message.rs`) and the room keeps sessions (`room/resume.rs`).

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
