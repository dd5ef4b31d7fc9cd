//! Resumable sessions: how a page whose connection drops for a moment comes back as itself.
//!
//! A client that speaks the `threadchat-resume` subprotocol gets a session: a secret token
//! (128 random bits), and with every line the line's position. When its connection drops
//! without a close, the session stays detached for `--resume-window`: its nickname stays
//! taken and nobody hears that it left. If it comes back in time with its token and the
//! position of the last line it got, its cursor is placed right after that line in the log
//! of its dialect: it gets every line it missed, once and in order, then the live ones.
//!
//! The room owns the table. This module keeps the sessions and the positions of the lines
//! still kept in that log, and answers where a position's next line starts.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::event::{ClientId, Position};

/// A session's secret, as the client presents it: 32 hexadecimal digits.
pub type Token = String;

/// One resumable client as the room remembers it.
pub struct Session {
    /// The connection that has it now; `None` while detached.
    pub client: Option<ClientId>,
    pub nickname: String,
    pub number: u32,
    /// The connection that joined under the name: a shared order holds it for that one.
    pub holder: ClientId,
    /// While detached: when the client is taken to have left.
    deadline: Option<Instant>,
}

/// Where a returning client is placed.
pub enum Return {
    /// Right after its last line: `missed` lines follow from log offset `at`.
    After { at: u64, missed: u64 },
    /// Its position is no longer kept (or never was): from the head, with the mark that
    /// lines may have been missed.
    Lost,
}

/// The sessions, and the positions of the lines in the resume dialect's log.
pub struct Sessions {
    by_token: HashMap<Token, Session>,
    /// Each line's position and log offset, oldest first; as far back as the log keeps.
    lines: VecDeque<(Position, u64)>,
    /// The position the next line gets when this instance numbers its own lines.
    next: u64,
    window: Duration,
}

impl Sessions {
    pub fn new(window: Duration) -> Sessions {
        Sessions {
            by_token: HashMap::new(),
            lines: VecDeque::new(),
            next: 1,
            window,
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// No session at all: nothing needs the resume dialect's log.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// A fresh token: 128 random bits, as 32 hexadecimal digits.
    pub fn new_token() -> Token {
        format!("{:032x}", rand::random::<u128>())
    }

    /// A new session for `client` under `token`.
    pub fn open(&mut self, token: &str, client: ClientId, nickname: &str, number: u32) {
        self.by_token.insert(
            token.to_owned(),
            Session {
                client: Some(client),
                nickname: nickname.to_owned(),
                number,
                holder: client,
                deadline: None,
            },
        );
    }

    /// The session comes back on `client`: attached to it from now on. Returns the session,
    /// with the connection that had it until now, if it was still attached to one.
    pub fn attach(
        &mut self,
        token: &str,
        client: ClientId,
    ) -> Option<(&Session, Option<ClientId>)> {
        let session = self.by_token.get_mut(token)?;
        let before = session.client.replace(client);
        session.deadline = None;
        Some((session, before))
    }

    /// The connection of `token`'s session dropped: detached, it waits `wait` for the client.
    pub fn detach(&mut self, token: &str, now: Instant, wait: Duration) {
        if let Some(session) = self.by_token.get_mut(token) {
            session.client = None;
            session.deadline = Some(now + wait);
        }
    }

    /// The session ended for good: a close, or the room gave up on it.
    pub fn close(&mut self, token: &str) -> Option<Session> {
        self.by_token.remove(token)
    }

    /// Takes out the detached sessions whose window has ended.
    pub fn expired(&mut self, now: Instant) -> Vec<Session> {
        let gone: Vec<Token> = self
            .by_token
            .iter()
            .filter(|(_, s)| s.deadline.is_some_and(|d| d <= now))
            .map(|(token, _)| token.clone())
            .collect();
        gone.iter()
            .filter_map(|token| self.by_token.remove(token))
            .collect()
    }

    /// Takes out every detached session, whatever its deadline: the server is stopping.
    pub fn take_detached(&mut self) -> Vec<Session> {
        let waiting: Vec<Token> = self
            .by_token
            .iter()
            .filter(|(_, s)| s.client.is_none())
            .map(|(token, _)| token.clone())
            .collect();
        waiting
            .iter()
            .filter_map(|token| self.by_token.remove(token))
            .collect()
    }

    /// Whether any session waits for its client.
    pub fn any_detached(&self) -> bool {
        self.by_token.values().any(|s| s.client.is_none())
    }

    /// The position of a line this instance numbers itself.
    pub fn next_position(&mut self) -> Position {
        let position = Position(0, self.next);
        self.next += 1;
        position
    }

    /// A line was appended at log offset `at`; lines before `oldest` are no longer kept.
    pub fn line(&mut self, position: Position, at: u64, oldest: u64) {
        self.lines.push_back((position, at));
        while self.lines.front().is_some_and(|&(_, at)| at < oldest) {
            self.lines.pop_front();
        }
    }

    /// Forgets every line's position: nobody can resume to them any more.
    pub fn forget_lines(&mut self) {
        self.lines.clear();
    }

    /// Where a client whose last line was at `position` comes back: right after that line
    /// if the log still keeps it, with the head at `head`.
    pub fn back_to(&self, position: Position, head: u64, oldest: u64) -> Return {
        let Some(&(last, _)) = self.lines.back() else {
            return Return::Lost;
        };
        if position == last {
            return Return::After {
                at: head,
                missed: 0,
            };
        }
        let after = self.lines.partition_point(|&(p, _)| p <= position);
        // Its own line must be known, and the next one still kept.
        let known = after > 0 && self.lines[after - 1].0 == position;
        match self.lines.get(after) {
            Some(&(_, at)) if known && at >= oldest => Return::After {
                at,
                missed: (self.lines.len() - after) as u64,
            },
            _ => Return::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(lines: u64) -> Sessions {
        let mut sessions = Sessions::new(Duration::from_secs(120));
        for i in 0..lines {
            let position = sessions.next_position();
            sessions.line(position, i * 10, 0);
        }
        sessions
    }

    #[test]
    fn a_client_comes_back_right_after_its_last_line() {
        let sessions = numbered(5); // positions 1..=5 at offsets 0, 10, ..., 40
        assert!(matches!(
            sessions.back_to(Position(0, 2), 50, 0),
            Return::After { at: 20, missed: 3 }
        ));
        assert!(matches!(
            sessions.back_to(Position(0, 5), 50, 0),
            Return::After { at: 50, missed: 0 }
        ));
    }

    #[test]
    fn a_position_no_longer_kept_or_never_given_is_lost() {
        let mut sessions = numbered(5);
        // The log lets go of everything before offset 25: positions 1 to 3 are gone.
        let position = sessions.next_position();
        sessions.line(position, 50, 25);
        assert!(matches!(
            sessions.back_to(Position(0, 2), 60, 25),
            Return::Lost
        ));
        assert!(matches!(
            sessions.back_to(Position(0, 4), 60, 25),
            Return::After { at: 40, missed: 2 }
        ));
        assert!(matches!(
            sessions.back_to(Position(0, 99), 60, 25),
            Return::Lost
        ));
        assert!(matches!(
            Sessions::new(Duration::ZERO).back_to(Position(0, 1), 0, 0),
            Return::Lost
        ));
    }

    #[test]
    fn a_detached_session_waits_for_the_window_then_expires_once() {
        let mut sessions = Sessions::new(Duration::from_secs(120));
        let token = Sessions::new_token();
        sessions.open(&token, 1, "user-7", 7);
        assert_eq!(token.len(), 32);
        let t0 = Instant::now();
        sessions.detach(&token, t0, sessions.window());
        assert!(sessions.any_detached());
        assert!(sessions.expired(t0 + Duration::from_secs(119)).is_empty());
        let (session, before) = sessions.attach(&token, 2).unwrap();
        assert_eq!((session.nickname.as_str(), before), ("user-7", None));
        assert!(sessions.expired(t0 + Duration::from_secs(500)).is_empty());
        sessions.detach(&token, t0, sessions.window());
        let gone = sessions.expired(t0 + Duration::from_secs(120));
        assert_eq!(gone.len(), 1);
        assert!(sessions.attach(&token, 3).is_none(), "expired for good");
        assert!(sessions.expired(t0 + Duration::from_secs(999)).is_empty());
    }

    #[test]
    fn tokens_are_not_guessable_from_each_other() {
        let mut sessions = Sessions::new(Duration::from_secs(1));
        let (a, b) = (Sessions::new_token(), Sessions::new_token());
        assert_ne!(a, b);
        sessions.open(&a, 1, "a", 1);
        assert!(sessions
            .attach("00000000000000000000000000000000", 3)
            .is_none());
    }
}
