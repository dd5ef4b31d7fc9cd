//! Where a line gets its place in the order every client sees, on a single instance: the
//! room's own log, the moment the room asks. Sessions live in the room's own table.
//!
//! A build with the `redis` feature compiles `shared.rs` in this file's place, where the
//! order may be a Redis stream other instances share. Both answer the room's questions
//! with the same names, so the room never asks which it has: here every answer is the
//! room's own, and nothing is ever news.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvError};
use tungstenite::Utf8Bytes;

use super::{Departure, Member, Returning, Room};
use crate::config::Config;
use crate::event::{ClientId, Entry};
use crate::room::session::Token;
use crate::send::outbox::Outbox;
use crate::trace::Trace;
use crate::wire::{self, Frame};

/// Nothing ever comes back later: a line is placed the moment the room asks.
pub enum News {}

/// A place asked for: `Some` line placed now, or `None` when it comes back later as news;
/// `Err`, refused at once.
pub type Answer = Result<Option<Entry>, News>;

/// This instance's own log.
pub struct Order {
    news: Receiver<News>,
}

impl Order {
    /// The only order this build has: the room's own log.
    pub fn start(_config: &Config, _trace: Trace) -> Result<Order, String> {
        Ok(Order::local())
    }

    pub fn local() -> Order {
        Order {
            news: crossbeam_channel::never(),
        }
    }

    /// Where news would come from: never.
    pub fn news(&self) -> &Receiver<News> {
        &self.news
    }

    pub fn join(&mut self, id: ClientId, nickname: &str, _session: Option<&Token>) -> Answer {
        Ok(Some(Entry::placed(
            wire::around(wire::JOINED, nickname),
            Some(id),
        )))
    }

    pub fn say(&mut self, _id: ClientId, line: String) -> Answer {
        Ok(Some(Entry::placed(line, None)))
    }

    /// `holder` is the connection that joined under the name; nobody else here can hold it.
    pub fn leave(&mut self, _holder: ClientId, nickname: &str) -> Answer {
        Ok(Some(Entry::placed(
            wire::around(wire::LEFT, nickname),
            None,
        )))
    }

    /// Lines are numbered only while a session here may come back.
    pub fn numbers_every_line(&self) -> bool {
        false
    }

    /// The server is stopping, and with it the room: close 1001 "going away".
    pub fn farewell(&self) -> Frame {
        wire::close_frame(wire::CLOSE_GOING_AWAY, "server shutting down")
    }

    /// Seats held for sessions waiting elsewhere: none, sessions are all in the room's table.
    pub fn seats_waiting(&self) -> usize {
        0
    }

    /// Ends the seats held for sessions waiting elsewhere whose window has ended. `true`
    /// while some still wait.
    pub fn expire_seats(&mut self, _now: Instant) -> bool {
        false
    }

    /// Clients waiting for a session's answer, to be let go: none, the room answers at once.
    pub fn take_resumers(&mut self) -> Vec<(ClientId, Arc<Outbox>)> {
        Vec::new()
    }

    /// Forgets what a client turned away had said before it was a member: nothing is kept.
    pub fn forget(&mut self, _id: ClientId) {}

    pub fn shrink(&mut self) {}

    /// Nothing waits to reach anyone.
    pub fn flush(&mut self) {}
}

impl Room {
    pub(super) fn hear(&mut self, news: Result<News, RecvError>) {
        if let Ok(news) = news {
            match news {}
        }
    }

    /// A session presented: this instance's table answers.
    pub(super) fn resume(&mut self, id: ClientId, returning: Returning) {
        self.resume_here(id, returning);
    }

    /// A member of the resume dialect dropped: its session waits in this instance's table.
    pub(super) fn detach(&mut self, gone: &Member, token: &Token, wait: std::time::Duration) {
        self.detach_here(gone, token, wait);
    }

    /// A newcomer's session opens in this instance's table.
    pub(super) fn open_session_table(&mut self, id: ClientId, member: &Member, token: &Token) {
        self.open_session_here(id, member, token);
    }

    /// The server stops: the member's leave is placed, whether it had a session or not,
    /// for this instance's sessions end with it.
    pub(super) fn goodbye(&mut self, member: Member) {
        let answer = self.order.leave(member.holder, &member.nickname);
        self.place(answer);
    }

    /// A line from a client that is not a member: on one instance a join is placed at once,
    /// so it was closed while its line was on the way, and its close said so.
    pub(super) fn hold_early_line(&mut self, _id: ClientId, _text: Utf8Bytes) {}

    /// Nothing was said early: a client is a member the moment it asks.
    pub(super) fn say_early_lines(&mut self, _id: ClientId) {}

    /// Nobody waits for an answer here. `true` when it was one.
    pub(super) fn left_while_waiting(&mut self, _id: ClientId, _how: Departure) -> bool {
        false
    }
}
