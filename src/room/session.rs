//! Resumable sessions: how a page whose connection drops for a moment comes back as itself.
//!
//! A client that speaks the `threadchat-resume` subprotocol gets a session: a secret token
//! (128 random bits), and with every line the line's position. When its connection drops
//! without a close, the session stays detached for `--resume-window`: its nickname stays
//! taken and nobody hears that it left. If it comes back in time with its token and the
//! position of the last line it got, its cursor is placed right after that line in the log
//! of its dialect: it gets every line it missed, once and in order, then the live ones.
//!
//! A session gets back only what it may have missed: never a line from before its own join,
//! and, once a connection of it has dropped, nothing that connection had already been handed
//! except what may still have been on its way (the socket's send buffer). Resumes are rated
//! too ([`RESUMES_PER_SECOND`]), since each one may replay lines. While detached, a session
//! holds its client's [`Seat`], so sessions count against `--max-clients` and the address's
//! share exactly as connections do.
//!
//! The room owns the table. This module keeps the sessions and the positions of the lines
//! still kept in that log, and answers where a position's next line starts.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dialect::Position;
use crate::event::ClientId;
use crate::limits::rate::{RateLimit, Verdict};
use crate::limits::seat::Seat;

#[cfg(feature = "redis")]
mod stream_ids;

/// How often one session may be resumed, on average; bursts up to twice that. A page comes
/// back after a random wait of up to half a second and more, so it never needs more.
pub const RESUMES_PER_SECOND: u32 = 1;

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
    /// Where, in the log of its dialect, the lines it may get back begin.
    floor: u64,
    /// While detached: its client's place in the server, kept as its connection kept it.
    seat: Option<Arc<Seat>>,
    resumes: RateLimit,
}

/// What a client presenting a token finds.
pub enum Attach<'a> {
    /// No session has that token (never had, or it ended).
    Unknown,
    /// The session is resumed more often than [`RESUMES_PER_SECOND`]: it stays as it was.
    TooOften,
    /// Attached to the client from now on; `before` is the connection that had it until
    /// now, if it was still attached to one.
    Back {
        session: &'a Session,
        before: Option<ClientId>,
    },
}

/// Where a returning client is placed.
pub enum Return {
    /// Right after its last line: `missed` lines follow from log offset `at`. `cut`: it
    /// asked for more than it may have (lines before its join, or ones it was already
    /// handed), so these start later than it asked, after the mark that lines were missed.
    After { at: u64, missed: u64, cut: bool },
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

impl Session {
    /// The lines before log offset `owed_from` reached a connection of this session: they
    /// are no longer owed to it.
    fn owes_from(&mut self, owed_from: u64) {
        self.floor = self.floor.max(owed_from);
    }
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

    /// A new session for `client` under `token`, whose join line is appended at log offset
    /// `joins_at`: it never gets back a line from before it.
    pub fn open(
        &mut self,
        token: &str,
        client: ClientId,
        nickname: &str,
        number: u32,
        joins_at: u64,
    ) {
        self.by_token.insert(
            token.to_owned(),
            Session {
                client: Some(client),
                nickname: nickname.to_owned(),
                number,
                holder: client,
                deadline: None,
                floor: joins_at,
                seat: None,
                resumes: RateLimit::new(RESUMES_PER_SECOND, Duration::MAX),
            },
        );
    }

    /// The session comes back on `client`, unless it is resumed too often.
    pub fn attach(&mut self, token: &str, client: ClientId, now: Instant) -> Attach<'_> {
        let Some(session) = self.by_token.get_mut(token) else {
            return Attach::Unknown;
        };
        if session.resumes.check(now) != Verdict::Send {
            return Attach::TooOften;
        }
        let before = session.client.replace(client);
        session.deadline = None;
        // The new connection holds a seat of its own.
        session.seat = None;
        Attach::Back { session, before }
    }

    /// The connection of `token`'s session dropped: detached, it waits `wait` for the client,
    /// holding the client's `seat`. The lines before log offset `owed_from` reached it.
    pub fn detach(
        &mut self,
        token: &str,
        now: Instant,
        wait: Duration,
        seat: Arc<Seat>,
        owed_from: u64,
    ) {
        if let Some(session) = self.by_token.get_mut(token) {
            session.client = None;
            session.deadline = Some(now + wait);
            session.seat = Some(seat);
            session.owes_from(owed_from);
        }
    }

    /// Another connection takes the session over; the lines before log offset `owed_from`
    /// reached the one that had it.
    pub fn taken_over(&mut self, token: &str, owed_from: u64) {
        if let Some(session) = self.by_token.get_mut(token) {
            session.owes_from(owed_from);
        }
    }

    /// Where, in the log of its dialect, the lines `token`'s session may get back begin.
    pub fn floor(&self, token: &str) -> u64 {
        self.by_token.get(token).map_or(0, |session| session.floor)
    }

    /// How many sessions there are, attached or not.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Gives back the table's spare room once many sessions have ended.
    pub fn shrink(&mut self) {
        self.by_token.shrink_to_fit();
        self.lines.shrink_to_fit();
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
    /// How many sessions wait for their client.
    pub fn waiting(&self) -> usize {
        self.by_token
            .values()
            .filter(|s| s.client.is_none())
            .count()
    }

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
    /// if the log still keeps it, with the head at `head`, but never before `floor`, where
    /// the lines its session may get back begin.
    pub fn back_to(&self, position: Position, head: u64, oldest: u64, floor: u64) -> Return {
        let Some(&(last, _)) = self.lines.back() else {
            return Return::Lost;
        };
        if position == last {
            return Return::After {
                at: head,
                missed: 0,
                cut: false,
            };
        }
        let after = self.lines.partition_point(|&(p, _)| p <= position);
        // Its own line must be known, and the next one still kept.
        let known = after > 0 && self.lines[after - 1].0 == position;
        match self.lines.get(after) {
            Some(&(_, at)) if known && at >= oldest => {
                let from = after.max(self.lines.partition_point(|&(_, at)| at < floor));
                Return::After {
                    at: self.lines.get(from).map_or(head, |&(_, at)| at),
                    missed: (self.lines.len() - from) as u64,
                    cut: from > after,
                }
            }
            _ => Return::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::seat::ConnectionCount;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn numbered(lines: u64) -> Sessions {
        let mut sessions = Sessions::new(Duration::from_secs(120));
        for i in 0..lines {
            let position = sessions.next_position();
            sessions.line(position, i * 10, 0);
        }
        sessions
    }

    fn seat(held: &Arc<AtomicUsize>) -> Arc<Seat> {
        held.fetch_add(1, Ordering::AcqRel);
        Seat::new(ConnectionCount(held.clone()), None)
    }

    #[test]
    fn a_client_comes_back_right_after_its_last_line() {
        let sessions = numbered(5); // positions 1..=5 at offsets 0, 10, ..., 40
        assert!(matches!(
            sessions.back_to(Position(0, 2), 50, 0, 0),
            Return::After {
                at: 20,
                missed: 3,
                cut: false
            }
        ));
        assert!(matches!(
            sessions.back_to(Position(0, 5), 50, 0, 0),
            Return::After {
                at: 50,
                missed: 0,
                cut: false
            }
        ));
    }

    #[test]
    fn a_client_never_gets_back_a_line_before_its_floor() {
        let sessions = numbered(5); // positions 1..=5 at offsets 0, 10, ..., 40
                                    // Its session began with the line at offset 30 (position 4): asking from position 1
                                    // gets positions 4 and 5, marked as cut.
        assert!(matches!(
            sessions.back_to(Position(0, 1), 50, 0, 30),
            Return::After {
                at: 30,
                missed: 2,
                cut: true
            }
        ));
        // A floor between lines starts at the next line.
        assert!(matches!(
            sessions.back_to(Position(0, 1), 50, 0, 31),
            Return::After {
                at: 40,
                missed: 1,
                cut: true
            }
        ));
        // A floor past every line: nothing but the live ones, still marked.
        assert!(matches!(
            sessions.back_to(Position(0, 1), 50, 0, 50),
            Return::After {
                at: 50,
                missed: 0,
                cut: true
            }
        ));
        // Asking from at or after the floor is not cut.
        assert!(matches!(
            sessions.back_to(Position(0, 3), 50, 0, 30),
            Return::After {
                at: 30,
                missed: 2,
                cut: false
            }
        ));
    }

    #[test]
    fn a_position_no_longer_kept_or_never_given_is_lost() {
        let mut sessions = numbered(5);
        // The log lets go of everything before offset 25: positions 1 to 3 are gone.
        let position = sessions.next_position();
        sessions.line(position, 50, 25);
        assert!(matches!(
            sessions.back_to(Position(0, 2), 60, 25, 0),
            Return::Lost
        ));
        assert!(matches!(
            sessions.back_to(Position(0, 4), 60, 25, 0),
            Return::After {
                at: 40,
                missed: 2,
                cut: false
            }
        ));
        assert!(matches!(
            sessions.back_to(Position(0, 99), 60, 25, 0),
            Return::Lost
        ));
        assert!(matches!(
            Sessions::new(Duration::ZERO).back_to(Position(0, 1), 0, 0, 0),
            Return::Lost
        ));
    }

    #[test]
    fn a_detached_session_waits_for_the_window_then_expires_once() {
        let held = Arc::new(AtomicUsize::new(0));
        let mut sessions = Sessions::new(Duration::from_secs(120));
        let token = Sessions::new_token();
        sessions.open(&token, 1, "user-7", 7, 0);
        assert_eq!(token.len(), 32);
        let t0 = Instant::now();
        sessions.detach(&token, t0, sessions.window(), seat(&held), 0);
        assert!(sessions.any_detached());
        assert_eq!(held.load(Ordering::Acquire), 1, "its seat is held");
        assert!(sessions.expired(t0 + Duration::from_secs(119)).is_empty());
        let Attach::Back { session, before } = sessions.attach(&token, 2, t0) else {
            panic!("not back")
        };
        assert_eq!((session.nickname.as_str(), before), ("user-7", None));
        assert_eq!(
            held.load(Ordering::Acquire),
            0,
            "the new connection has its own"
        );
        assert!(sessions.expired(t0 + Duration::from_secs(500)).is_empty());
        sessions.detach(&token, t0, sessions.window(), seat(&held), 0);
        let gone = sessions.expired(t0 + Duration::from_secs(120));
        assert_eq!(gone.len(), 1);
        drop(gone);
        assert_eq!(
            held.load(Ordering::Acquire),
            0,
            "given back with the session"
        );
        assert!(matches!(sessions.attach(&token, 3, t0), Attach::Unknown));
        assert!(sessions.expired(t0 + Duration::from_secs(999)).is_empty());
    }

    #[test]
    fn a_dropped_connection_raises_the_floor_and_resumes_are_rated() {
        let held = Arc::new(AtomicUsize::new(0));
        let mut sessions = Sessions::new(Duration::from_secs(120));
        let token = Sessions::new_token();
        sessions.open(&token, 1, "user-7", 7, 100);
        assert_eq!(sessions.floor(&token), 100);
        let t0 = Instant::now();
        sessions.detach(&token, t0, sessions.window(), seat(&held), 40);
        assert_eq!(sessions.floor(&token), 100, "never below its join");
        sessions.detach(&token, t0, sessions.window(), seat(&held), 500);
        assert_eq!(sessions.floor(&token), 500);
        sessions.taken_over(&token, 300);
        assert_eq!(sessions.floor(&token), 500, "it only rises");
        // A burst of twice the rate, then one a second.
        let burst = 2 * RESUMES_PER_SECOND as usize;
        for i in 0..burst {
            let back = sessions.attach(&token, 10 + i as u64, t0);
            assert!(matches!(back, Attach::Back { .. }), "resume {i}");
        }
        assert!(matches!(sessions.attach(&token, 20, t0), Attach::TooOften));
        let later = t0 + Duration::from_secs(1);
        assert!(matches!(
            sessions.attach(&token, 21, later),
            Attach::Back { .. }
        ));
    }

    #[test]
    fn tokens_are_not_guessable_from_each_other() {
        let mut sessions = Sessions::new(Duration::from_secs(1));
        let (a, b) = (Sessions::new_token(), Sessions::new_token());
        assert_ne!(a, b);
        sessions.open(&a, 1, "a", 1, 0);
        assert!(matches!(
            sessions.attach("00000000000000000000000000000000", 3, Instant::now()),
            Attach::Unknown
        ));
    }
}
