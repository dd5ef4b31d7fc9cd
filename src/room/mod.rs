//! The room: one broadcaster thread that owns the nickname table.
//!
//! In the cookbook, `*connections*` is a global hash table that every connection's
//! handler mutates. Here a single thread owns the table, and client threads only talk to
//! it by sending [`Event`]s over a channel. Because one thread decides the order of every
//! line, any two clients that are connected throughout see the same lines in the same
//! order, and the table needs no lock.
//!
//! The broadcaster never touches a socket. Each line is framed once per dialect and appended
//! once to that dialect's [`Log`] (plain; and numbered, while anyone may resume); a
//! newcomer's writer gets a cursor at the newcomer's own join line, and the
//! writer threads do the slow part. The room never waits on anyone, and never looks at
//! each member to send a line: a line costs the same with ten members or ten thousand.
//!
//! Every line first gets its place in the [`Order`]: at once on a single instance, or, with
//! `--redis`, when it comes back through the stream all instances share, as news on a channel
//! of the cluster's own. Either way the room asks for a place, then appends the line once it
//! is placed, or tells the one client concerned that it was not. A newcomer is a member from
//! the moment its join is placed. The room never asks which order it has: `order.rs` (one
//! instance) or, built with the `redis` feature, `shared.rs` answers its questions and keeps
//! its sessions.

#[cfg(not(feature = "redis"))]
pub mod order;
#[cfg(feature = "redis")]
#[path = "shared.rs"]
pub mod order;
mod resume;
pub mod session;
mod upkeep;

use order::*;
use resume::*;
pub use upkeep::pass_overran;
use upkeep::*;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver};
use tungstenite::Utf8Bytes;

use crate::dialect::{Position, Resume};
use crate::event::{ClientId, Departure, Entry, Event};
use crate::figures::{self, Figures};
use crate::limits::seat::Seat;
use crate::room::session::{Attach, Return, Sessions, Token};
use crate::send::log::Log;
use crate::send::outbox::Outbox;
use crate::send::writer::Writer;
use crate::sys;
use crate::trace::Trace;
use crate::wire::{self, NICKNAME_SPACE};

/// Random draws for a free `user-N` before the room looks for one in order. The room holds at
/// most half the names, so all of these clash about once in 4 billion joins.
const RANDOM_DRAWS: usize = 32;

const NO_NAME_FREE: &str = "every nickname is taken; try again later";

/// A connected client as the room sees it.
struct Member {
    number: u32,
    nickname: String,
    from: String,
    outbox: Arc<Outbox>,
    /// Its place in the server, held while it is here (and while its session waits).
    seat: Arc<Seat>,
    /// Its session's token, for a client of the resume dialect.
    session: Option<Token>,
    /// The connection that joined under its name: itself, or for a resumed session, the
    /// session's first, under which a shared order holds the name.
    holder: ClientId,
}

/// A newcomer whose join waits for its place.
struct Newcomer {
    member: Member,
    /// It asked to resume a session that could not be: once placed, it hears the mark that
    /// lines may have been missed before its new session's token.
    missed: bool,
}

/// The nickname table and everything the broadcaster decides.
pub struct Room {
    members: HashMap<ClientId, Member>,
    newcomers: HashMap<ClientId, Newcomer>,
    /// The N of every `user-N` in use here, so a join finds a free name without a scan.
    taken: HashSet<u32>,
    /// Where each line gets its place: this log, or a stream shared with other instances;
    /// and where sessions live.
    order: Order,
    /// Every line, in the one order every member sees: plain, and (while there are
    /// sessions) numbered for the resume dialect.
    logs: [Log; 2],
    sessions: Sessions,
    /// Fires every second while a detached session waits; `never` otherwise.
    expiry: Receiver<Instant>,
    /// Woken after each append, so that none sleeps through a line.
    writers: Vec<Arc<Writer>>,
    /// The most held (members and sessions) since memory was last given back.
    peak: usize,
    /// Fires when it is time to give memory back; `never` until the room has halved.
    give_back: Receiver<Instant>,
    trace: Trace,
    /// What the admin port reads: counted here, by the room thread alone.
    figures: Arc<Figures>,
}

impl Room {
    pub fn new(
        logs: [Log; 2],
        writers: Vec<Arc<Writer>>,
        order: Order,
        resume_window: Duration,
        trace: Trace,
        figures: Arc<Figures>,
    ) -> Room {
        if order.numbers_every_line() {
            logs[1].keep(logs[1].reader().retention());
        }
        Room {
            members: HashMap::new(),
            newcomers: HashMap::new(),
            taken: HashSet::new(),
            order,
            logs,
            sessions: Sessions::new(resume_window),
            expiry: crossbeam_channel::never(),
            writers,
            peak: 0,
            give_back: crossbeam_channel::never(),
            trace,
            figures,
        }
    }

    /// Runs the broadcaster until every sender of events has gone or shutdown is asked.
    ///
    /// Pings are sent from here, framed once for everybody, so no client thread needs a
    /// timer of its own.
    pub fn run(mut self, events: Receiver<Event>, ping_interval: Option<Duration>) {
        let pings = match ping_interval {
            Some(every) => tick(every),
            None => crossbeam_channel::never(),
        };
        let pulse = tick(PULSE_EVERY);
        self.pulse();
        loop {
            select! {
                recv(events) -> event => match event {
                    Ok(Event::Join { id, from, outbox, seat, resume: Some(Resume::Back { token, position }) }) => {
                        self.resume(id, Returning { from, outbox, seat, token, position })
                    }
                    Ok(Event::Join { id, from, outbox, seat, resume }) => {
                        self.handle_new_connection(id, from, outbox, seat, resume.map(|_| false))
                    }
                    Ok(Event::Say { id, text }) => self.broadcast_to_room(id, text),
                    Ok(Event::Leave { id, how }) => self.handle_close_connection(id, how),
                    #[cfg(debug_assertions)]
                    Ok(Event::Pause(pause)) => std::thread::sleep(pause),
                    Ok(Event::Shutdown) | Err(_) => break,
                },
                recv(self.order.news()) -> news => self.hear(news),
                recv(pings) -> _ => self.ping_everyone(),
                recv(pulse) -> _ => self.pulse(),
                recv(self.give_back) -> _ => self.shrink(),
                recv(self.expiry) -> _ => self.expire_sessions(),
            }
        }
        // News that came before the stop is handled first, as it would have been had it come
        // on the events' channel: a join placed by then is a member whose leave is placed.
        let arrived: Vec<News> = self.order.news().try_iter().collect();
        arrived.into_iter().for_each(|news| self.hear(Ok(news)));
        self.say_goodbye();
    }

    /// Draws a free `user-N` for the newcomer and asks a place for its join. Once placed,
    /// everyone hears it, the newcomer first of all. `fresh_session`: a client of the resume
    /// dialect, which gets a session (after a mark that lines were missed, with `true`).
    fn handle_new_connection(
        &mut self,
        id: ClientId,
        from: String,
        outbox: Arc<Outbox>,
        seat: Arc<Seat>,
        fresh_session: Option<bool>,
    ) {
        let Some(number) = self.free_number() else {
            return self.turn_away(id, &outbox, NO_NAME_FREE);
        };
        let newcomer = Newcomer {
            member: Member {
                number,
                nickname: format!("user-{number}"),
                from,
                outbox,
                seat,
                session: fresh_session.map(|_| Sessions::new_token()),
                holder: id,
            },
            missed: fresh_session == Some(true),
        };
        self.ask_to_join(id, newcomer);
    }

    fn ask_to_join(&mut self, id: ClientId, newcomer: Newcomer) {
        let answer = self.order.join(
            id,
            &newcomer.member.nickname,
            newcomer.member.session.as_ref(),
        );
        self.newcomers.insert(id, newcomer);
        self.place(answer);
    }

    /// Prefixes the sender's nickname and sends the line to every member, sender included.
    fn broadcast_to_room(&mut self, id: ClientId, text: Utf8Bytes) {
        let Some(sender) = self.members.get(&id) else {
            return self.hold_early_line(id, text);
        };
        let line = format!("{}: {}", sender.nickname, text.as_str());
        let answer = self.order.say(id, line);
        self.place(answer);
    }

    /// Frees the nickname and tells the others. Every departure is reported once, whether
    /// the client closed, vanished, or was evicted by its writer. A resumable client lost
    /// without a close keeps its session, and its name, for the window (one going away, for
    /// the reload grace): nobody hears yet.
    fn handle_close_connection(&mut self, id: ClientId, how: Departure) {
        if self.left_while_waiting(id, how) {
            return;
        }
        let Some(gone) = self.members.remove(&id) else {
            return;
        };
        figures::add(&self.figures.room.leaves[how as usize], 1);
        // A client of the resume dialect dropped without a close: nobody hears yet.
        let Some(gone) = self.keep_session_waiting(gone, how) else {
            return;
        };
        self.announce_leave(gone.holder, gone.number, gone.nickname, &gone.from);
    }

    /// Frees the nickname and asks a place for the leave line. `holder`: the connection
    /// that joined under it (for a resumed session, its first one).
    fn announce_leave(&mut self, holder: ClientId, number: u32, nickname: String, from: &str) {
        self.taken.remove(&number);
        eprintln!("leave {nickname} from {from}");
        self.trace.decision(&nickname, "left the room");
        let answer = self.order.leave(holder, &nickname);
        self.place(answer);
        self.give_back_when_halved();
    }

    /// Acts on the order's answer to a request for a place, when it comes at once: the line,
    /// or (news) its refusal.
    fn place(&mut self, answer: Answer) {
        match answer {
            Ok(Some(entry)) => self.placed(entry),
            Ok(None) => {}
            Err(news) => self.hear(Ok(news)),
        }
    }

    /// A line has its place: everyone gets it. A newcomer's join makes it a member, reading
    /// from its own join line on.
    fn placed(&mut self, entry: Entry) {
        let Some((id, newcomer)) = entry
            .joined
            .and_then(|id| Some((id, self.newcomers.remove(&id)?)))
        else {
            self.append_line(&entry.line, entry.position);
            return;
        };
        let member = newcomer.member;
        let outbox = member.outbox.clone();
        let _ = outbox.nickname.set(member.nickname.clone());
        if member.session.is_some() {
            self.open_session(id, &member, newcomer.missed);
        }
        eprintln!("join  {} from {}", member.nickname, member.from);
        self.trace.decision(&member.nickname, "joined the room");
        self.members.insert(id, member);
        self.note_peak();
        figures::add(&self.figures.room.joins, 1);
        let at = self.append_line(&entry.line, entry.position);
        self.start_reading(id, &outbox, at[outbox.dialect as usize]);
        self.say_early_lines(id);
    }

    /// Frames `line` once per dialect and appends it: to the plain log, and while there are
    /// sessions, after its position, to the numbered one. Returns where it starts in each.
    fn append_line(&mut self, line: &str, position: Option<Position>) -> [u64; 2] {
        self.trace.broadcast(self.members.len(), line);
        figures::add(&self.figures.room.lines, 1);
        if !self.numbering() {
            return [
                self.append(&wire::text_frame(line), &[]),
                self.logs[1].head(),
            ];
        }
        let position = position.unwrap_or_else(|| self.sessions.next_position());
        let numbered = wire::text_frame(&format!("{position} {line}"));
        let at = [self.logs[0].head(), self.logs[1].head()];
        self.append(&wire::text_frame(line), &numbered);
        let oldest = self.logs[1].oldest();
        self.sessions.line(position, at[1], oldest);
        at
    }

    /// Appends a frame for each dialect (the numbered one only while there are sessions)
    /// and wakes any writer that is asleep. Returns where the plain one starts.
    fn append(&mut self, plain: &[u8], numbered: &[u8]) -> u64 {
        let now = figures::since_start_us();
        let at = self.logs[0].append_at(plain, now);
        figures::add(&self.figures.room.bytes_appended, plain.len() as u64);
        if self.numbering() && !numbered.is_empty() {
            self.logs[1].append_at(numbered, now);
        }
        for writer in &self.writers {
            writer.wake();
        }
        at
    }

    /// One shared ping in the log, for everyone.
    fn ping_everyone(&mut self) {
        let ping = wire::ping_frame();
        self.append(&ping, &ping);
        self.trace.pinged(self.members.len());
    }

    /// Sends close 1001 to every member; its writer shuts the socket after it. Then each
    /// leave is placed: after every close here, so only other instances' clients hear them.
    ///
    /// In a cluster the others carry on: close 1012 (service restart) tells every client to
    /// come back, and a resumable one resumes on another instance, unannounced: its session
    /// waits for it instead of its leave being placed.
    fn say_goodbye(&mut self) {
        let bye = self.order.farewell();
        let members: Vec<(ClientId, Member)> = self.members.drain().collect();
        for _ in &members {
            self.figures.ended("shutdown");
        }
        for (_, member) in &members {
            self.writers[member.outbox.writer].close(&member.outbox, Some(bye.clone()));
        }
        let waiting = std::mem::take(&mut self.newcomers)
            .into_iter()
            .map(|(id, newcomer)| (id, newcomer.member.outbox))
            .chain(self.order.take_resumers());
        for (id, outbox) in waiting.collect::<Vec<_>>() {
            let head = self.logs[outbox.dialect as usize].head();
            self.start_reading(id, &outbox, head);
            self.writers[outbox.writer].close(&outbox, Some(bye.clone()));
        }
        for (_, member) in members {
            self.goodbye(member);
        }
        // This instance's sessions live in this process: waiting ones end with it.
        for session in self.sessions.take_detached() {
            let answer = self.order.leave(session.holder, &session.nickname);
            self.place(answer);
        }
        self.order.flush();
    }

    /// A free N, reserved: drawn at random, as the cookbook draws it. A room holds at most
    /// half of the 100,000 names (`config::MOST_CLIENTS` counts sessions that wait, too), so
    /// a draw is free at least every other time; should [`RANDOM_DRAWS`] all clash, the first
    /// free N from a random start is taken, so a join never waits on chance. `None`: every
    /// name is taken.
    fn free_number(&mut self) -> Option<u32> {
        for _ in 0..RANDOM_DRAWS {
            let n = rand::random_range(0..NICKNAME_SPACE);
            if self.taken.insert(n) {
                return Some(n);
            }
        }
        let start = rand::random_range(0..NICKNAME_SPACE);
        let n = (start..NICKNAME_SPACE)
            .chain(0..start)
            .find(|n| !self.taken.contains(n))?;
        self.taken.insert(n);
        Some(n)
    }

    /// The newcomer's writer starts sending it its dialect's log from `at`, its join line.
    fn start_reading(&self, id: ClientId, outbox: &Arc<Outbox>, at: u64) {
        let log = &self.logs[outbox.dialect as usize];
        self.writers[outbox.writer].add(id, outbox.clone(), log.cursor_at(at));
    }

    /// Closes a newcomer the room cannot take now (close 1013, try again later, saying
    /// `why`), or hands a newcomer that is already closing to its writer, which sends its
    /// last frame. It never joined, so nobody hears of it leaving, nor of what it said.
    fn turn_away(&mut self, id: ClientId, outbox: &Arc<Outbox>, why: &str) {
        self.order.forget(id);
        let head = self.logs[outbox.dialect as usize].head();
        self.start_reading(id, outbox, head);
        let sorry = wire::close_frame(wire::CLOSE_TRY_AGAIN_LATER, why);
        self.writers[outbox.writer].close(outbox, Some(sorry));
    }
}

#[cfg(test)]
mod tests;
