//! The room: one broadcaster thread that owns the nickname table.
//!
//! In the cookbook, `*connections*` is a global hash table that every connection's
//! handler mutates. Here a single thread owns the table, and client threads only talk to
//! it by sending [`Event`]s over a channel. Because one thread decides the order of every
//! line, any two clients that are connected throughout see the same lines in the same
//! order, and the table needs no lock.
//!
//! The broadcaster never touches a socket. Each line is framed once and appended once to
//! the [`Log`]; a newcomer's writer gets a cursor at the newcomer's own join line, and the
//! writer threads do the slow part. The room never waits on anyone, and never looks at
//! each member to send a line: a line costs the same with ten members or ten thousand.
//!
//! Every line first gets its place in the [`Order`]: at once on a single instance, or, with
//! `--redis`, when it comes back through the stream all instances share. Either way the room
//! asks for a place, then appends the line once it is placed, or tells the one client
//! concerned that it was not. A newcomer is a member from the moment its join is placed.

pub mod order;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver};
use tungstenite::Utf8Bytes;

use crate::event::{
    ClientId, Departure, Entry, Event, Item, Placement, Position, Refusal, Resume, Resumed,
};
use crate::limits::seat::Seat;
use crate::room::order::Order;
use crate::room::session::{Attach, Return, Sessions, Token};
use crate::send::log::Log;
use crate::send::outbox::Outbox;
use crate::send::writer::Writer;
use crate::sys;
use crate::trace::Trace;
use crate::wire::{self, NICKNAME_SPACE};

/// How long after the room has halved it gives memory back: the departed clients' threads
/// free their buffers just after their leave reaches the room.
const GIVE_BACK_AFTER: Duration = Duration::from_secs(1);

/// Draws of a nickname that other instances hold before a newcomer is turned away.
const MOST_DRAWS: usize = 100;

/// Random draws for a free `user-N` before the room looks for one in order. The room holds at
/// most half the names, so all of these clash about once in 4 billion joins.
const RANDOM_DRAWS: usize = 32;

/// Lines a newcomer may say before its join is placed (in a cluster, a round trip to Redis
/// away): they are placed right after its join. More are refused aloud.
const EARLY_LINES_MOST: usize = 32;

/// What a newcomer hears for a line past [`EARLY_LINES_MOST`] said before its join.
const NOT_YET: &str = " .... not sent: you have not joined yet";

/// Close reasons for a client the room cannot take now (close 1013, try again later).
const UNREACHABLE: &str = "the room is unreachable; try again later";
const NO_NAME_FREE: &str = "every nickname is taken; try again later";
const RESUMING_TOO_OFTEN: &str = "resuming too often; try again later";

/// What the sender alone hears when its line could not be placed.
const NOT_SENT: &str = " .... not sent: the room is unreachable";

/// What members hear where lines of the shared order were lost before they could be read.
const MISSED: &str = " .... some lines were missed here";

/// The same, in the resume dialect, where it also marks a session that could not resume.
const MISSED_MARK: &str = "missed";

/// How often detached sessions are checked against their window.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// How long a session closed with 1001 "going away" waits for its client. A browser sends it
/// when its tab reloads, and comes back within a second or two; it sends it as well when the
/// tab is closed for good, which is then announced this much later than a plain close.
const RELOAD_GRACE: Duration = Duration::from_secs(5);

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
    /// Nicknames drawn for it so far.
    draws: usize,
    /// It left before its join was placed: announce the leave right after the join.
    gone: bool,
    /// It asked to resume a session that could not be: once placed, it hears the mark that
    /// lines may have been missed before its new session's token.
    missed: bool,
}

/// A client presenting a session to a shared order, waiting for the answer.
struct Resumer {
    from: String,
    outbox: Arc<Outbox>,
    seat: Arc<Seat>,
    token: Token,
    /// The position of the last line it got.
    position: Position,
    /// It left while waiting, and how.
    gone: Option<Departure>,
}

/// The nickname table and everything the broadcaster decides.
pub struct Room {
    members: HashMap<ClientId, Member>,
    newcomers: HashMap<ClientId, Newcomer>,
    resumers: HashMap<ClientId, Resumer>,
    /// What newcomers and resumers said before they were members, said once they are.
    early: HashMap<ClientId, Vec<Utf8Bytes>>,
    /// With a shared order: the seats of this instance's clients whose sessions wait in
    /// Redis, until the window ends or the session is resumed here, by its holder.
    waiting_seats: HashMap<ClientId, (Instant, Arc<Seat>)>,
    /// The N of every `user-N` in use here, so a join finds a free name without a scan.
    taken: HashSet<u32>,
    /// Where each line gets its place: this log, or a stream shared with other instances.
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
}

impl Room {
    pub fn new(
        logs: [Log; 2],
        writers: Vec<Arc<Writer>>,
        order: Order,
        resume_window: Duration,
        trace: Trace,
    ) -> Room {
        if order.is_shared() {
            // A session may come back here from any instance: every line is numbered.
            logs[1].keep(logs[1].reader().retention());
        }
        Room {
            members: HashMap::new(),
            newcomers: HashMap::new(),
            resumers: HashMap::new(),
            early: HashMap::new(),
            waiting_seats: HashMap::new(),
            taken: HashSet::new(),
            order,
            logs,
            sessions: Sessions::new(resume_window),
            expiry: crossbeam_channel::never(),
            writers,
            peak: 0,
            give_back: crossbeam_channel::never(),
            trace,
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
        loop {
            select! {
                recv(events) -> event => match event {
                    Ok(Event::Join { id, from, outbox, seat, resume: Some(Resume::Back { token, position }) }) => {
                        self.come_back(id, from, outbox, seat, &token, position)
                    }
                    Ok(Event::Join { id, from, outbox, seat, resume }) => {
                        self.handle_new_connection(id, from, outbox, seat, resume.map(|_| false))
                    }
                    Ok(Event::Say { id, text }) => self.broadcast_to_room(id, text),
                    Ok(Event::Leave { id, how }) => self.handle_close_connection(id, how),
                    Ok(Event::Stream(entries)) => entries.into_iter().for_each(|e| self.placed(e)),
                    Ok(Event::Refused(item, why)) => self.refused(item, why),
                    Ok(Event::Gap) => {
                        self.append(&wire::text_frame(MISSED), &wire::text_frame(MISSED_MARK));
                    }
                    Ok(Event::Fenced) => self.restart_everyone(),
                    Ok(Event::NameLost { id }) => self.lose_name(id),
                    Ok(Event::Shutdown) | Err(_) => break,
                },
                recv(pings) -> _ => self.ping_everyone(),
                recv(self.give_back) -> _ => self.shrink(),
                recv(self.expiry) -> _ => self.expire_sessions(),
            }
        }
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
            draws: 1,
            gone: false,
            missed: fresh_session == Some(true),
        };
        self.ask_to_join(id, newcomer);
    }

    /// A client of the resume dialect presents a session. While the session waits for it (or
    /// is still attached to an older connection, which it takes over), it comes back under its
    /// name, unannounced, right after the last line it got if the log still keeps it. Else it
    /// gets a fresh session, after the mark that lines may have been missed.
    fn come_back(
        &mut self,
        id: ClientId,
        from: String,
        outbox: Arc<Outbox>,
        seat: Arc<Seat>,
        token: &str,
        position: Position,
    ) {
        if self.order.is_shared() {
            // The session lives in Redis: the answer comes back through the stream.
            let token = token.to_owned();
            self.resumers.insert(
                id,
                Resumer {
                    from,
                    outbox,
                    seat,
                    token: token.clone(),
                    position,
                    gone: None,
                },
            );
            return self.place(Item::Resume { id, token });
        }
        let (nickname, number, holder, before) =
            match self.sessions.attach(token, id, Instant::now()) {
                Attach::Unknown => {
                    return self.handle_new_connection(id, from, outbox, seat, Some(true))
                }
                // Each resume may replay lines: one that comes too often waits, session kept.
                Attach::TooOften => return self.turn_away(id, &outbox, RESUMING_TOO_OFTEN),
                Attach::Back { session, before } => (
                    session.nickname.clone(),
                    session.number,
                    session.holder,
                    before,
                ),
            };
        if let Some(older) = before.and_then(|old| self.members.remove(&old)) {
            self.sessions.taken_over(token, owed_from(&older.outbox));
            self.taken_over(older);
        }
        let floor = self.sessions.floor(token);
        let member = Member {
            number,
            nickname,
            from,
            outbox,
            seat,
            session: Some(token.to_owned()),
            holder,
        };
        self.take_back(id, member, position, floor);
    }

    /// The connection that had a session is closed: another one took it over.
    fn taken_over(&self, older: Member) {
        let taken_over = wire::close_frame(wire::CLOSE_POLICY, "resumed on another connection");
        self.writers[older.outbox.writer].close(&older.outbox, Some(taken_over));
    }

    /// A session is back on connection `id`: the member reads on right after the last line
    /// it got (`resumed N`, then the N lines it missed) if the log still keeps it, but not
    /// before `floor`, where the lines its session may get back begin (starting there is
    /// marked as a gap); else from now on, after the mark that lines may have been missed.
    fn take_back(&mut self, id: ClientId, member: Member, position: Position, floor: u64) {
        let outbox = member.outbox.clone();
        let _ = outbox.nickname.set(member.nickname.clone());
        eprintln!("back  {} from {}", member.nickname, member.from);
        self.trace.decision(&member.nickname, "resumed its session");
        let numbered = &self.logs[1];
        let writer = &self.writers[outbox.writer];
        let back = self
            .sessions
            .back_to(position, numbered.head(), numbered.oldest(), floor);
        let resumed = match back {
            Return::After { at, missed, cut } => numbered
                .cursor_back_at(at)
                .map(|cursor| (cursor, at, missed, cut)),
            Return::Lost => None,
        };
        if let Some((_, at, missed, cut)) = &resumed {
            let resumed = wire::text_frame(&format!("resumed {missed}"));
            let _ = writer.push_before(&outbox, resumed, Some(*at));
            if *cut {
                let _ = writer.push_before(&outbox, wire::text_frame(MISSED_MARK), Some(*at));
            }
        }
        let resumed = resumed.map(|(cursor, _, _, _)| cursor);
        let cursor = resumed.unwrap_or_else(|| {
            // Itself again, but from now on: its place is no longer kept.
            let _ = writer.push(&outbox, wire::text_frame("resumed 0"));
            let _ = writer.push(&outbox, wire::text_frame(MISSED_MARK));
            numbered.cursor_at(numbered.head())
        });
        writer.add(id, outbox, cursor);
        self.members.insert(id, member);
        self.peak = self.peak.max(self.held());
        self.say_early_lines(id);
    }

    /// A session moved between connections somewhere in the cluster. The connection that
    /// had it, if ours, is closed without a word (or was already gone); the one that takes
    /// it, if ours, comes back under its name.
    fn resumed(&mut self, resumed: Resumed) {
        let Resumed {
            nickname,
            by,
            from,
            floor,
        } = resumed;
        if let Some(old) = from {
            self.waiting_seats.remove(&old);
        }
        if let Some(older) = from.and_then(|old| self.members.remove(&old)) {
            self.taken.remove(&older.number);
            self.taken_over(older);
        }
        if from.is_some() && by.is_none() {
            self.order.holds(&nickname, None);
        }
        let Some((id, resumer)) = by.and_then(|id| Some((id, self.resumers.remove(&id)?))) else {
            return;
        };
        self.order.holds(&nickname, Some(id));
        let number = nickname
            .strip_prefix("user-")
            .and_then(|n| n.parse().ok())
            .unwrap_or(NICKNAME_SPACE);
        self.taken.insert(number);
        let member = Member {
            number,
            nickname,
            from: resumer.from,
            outbox: resumer.outbox,
            seat: resumer.seat,
            session: Some(resumer.token),
            holder: id,
        };
        let floor = floor.map_or(0, |at| self.sessions.offset_of(at, self.logs[1].head()));
        self.take_back(id, member, resumer.position, floor);
        if let Some(how) = resumer.gone {
            self.handle_close_connection(id, how);
        }
    }

    fn ask_to_join(&mut self, id: ClientId, newcomer: Newcomer) {
        let nickname = newcomer.member.nickname.clone();
        let session = newcomer.member.session.clone();
        self.newcomers.insert(id, newcomer);
        self.place(Item::Join {
            id,
            nickname,
            session,
        });
    }

    /// Prefixes the sender's nickname and sends the line to every member, sender included.
    fn broadcast_to_room(&mut self, id: ClientId, text: Utf8Bytes) {
        let Some(sender) = self.members.get(&id) else {
            return self.hold_early_line(id, text);
        };
        let line = format!("{}: {}", sender.nickname, text.as_str());
        self.place(Item::Say { id, line });
    }

    /// A line from a client that is not a member yet: its join (or its resume) is on its way
    /// through a shared order. It is said once the client is a member; past
    /// [`EARLY_LINES_MOST`] the sender alone hears that it was not sent. A client that is
    /// neither was closed while its line was on the way, and its close said so.
    fn hold_early_line(&mut self, id: ClientId, text: Utf8Bytes) {
        let outbox = match (self.newcomers.get(&id), self.resumers.get(&id)) {
            (Some(newcomer), _) => &newcomer.member.outbox,
            (None, Some(resumer)) => &resumer.outbox,
            (None, None) => return,
        };
        let early = self.early.entry(id).or_default();
        if early.len() < EARLY_LINES_MOST {
            return early.push(text);
        }
        let notice = wire::notice(outbox.dialect, NOT_YET);
        let _ = self.writers[outbox.writer].push(outbox, notice);
    }

    /// The client is a member now: what it said meanwhile is said, in order.
    fn say_early_lines(&mut self, id: ClientId) {
        for text in self.early.remove(&id).unwrap_or_default() {
            self.broadcast_to_room(id, text);
        }
    }

    /// Frees the nickname and tells the others. Every departure is reported once, whether
    /// the client closed, vanished, or was evicted by its writer. A resumable client lost
    /// without a close keeps its session, and its name, for the window (one going away, for
    /// the reload grace): nobody hears yet.
    fn handle_close_connection(&mut self, id: ClientId, how: Departure) {
        if let Some(newcomer) = self.newcomers.get_mut(&id) {
            newcomer.gone = true;
            return;
        }
        if let Some(resumer) = self.resumers.get_mut(&id) {
            resumer.gone = Some(how);
            return;
        }
        let Some(gone) = self.members.remove(&id) else {
            return;
        };
        let wait = match how {
            Departure::Left => None,
            Departure::Lost => Some(self.sessions.window()),
            Departure::GoingAway => Some(RELOAD_GRACE.min(self.sessions.window())),
        };
        match (&gone.session, wait) {
            (Some(_), Some(wait)) if self.order.is_shared() => {
                // The session waits in Redis, for whichever instance the client reaches.
                eprintln!(
                    "drop  {} from {}; its session waits",
                    gone.nickname, gone.from
                );
                self.trace
                    .decision(&gone.nickname, "dropped; its session waits for it");
                self.taken.remove(&gone.number);
                let until = Instant::now() + wait;
                self.waiting_seats
                    .insert(gone.holder, (until, gone.seat.clone()));
                self.expiry = tick(EXPIRE_EVERY);
                let owed = self.sessions.position_at(owed_from(&gone.outbox));
                self.place(Item::Detach {
                    id: gone.holder,
                    nickname: gone.nickname,
                    wait,
                    owed,
                });
                return;
            }
            (Some(token), Some(wait)) => {
                let (seat, owed) = (gone.seat.clone(), owed_from(&gone.outbox));
                self.sessions
                    .detach(token, Instant::now(), wait, seat, owed);
                eprintln!(
                    "drop  {} from {}; its session waits",
                    gone.nickname, gone.from
                );
                self.trace
                    .decision(&gone.nickname, "dropped; its session waits for it");
                self.expiry = tick(EXPIRE_EVERY);
                return;
            }
            (Some(token), None) => {
                self.sessions.close(token);
                self.stop_numbering_if_unused();
            }
            (None, _) => {}
        }
        self.announce_leave(gone.holder, gone.number, gone.nickname, &gone.from);
    }

    /// Frees the nickname and asks a place for the leave line. `holder`: the connection
    /// that joined under it (for a resumed session, its first one).
    fn announce_leave(&mut self, holder: ClientId, number: u32, nickname: String, from: &str) {
        self.taken.remove(&number);
        eprintln!("leave {nickname} from {from}");
        self.trace.decision(&nickname, "left the room");
        self.place(Item::Leave {
            id: holder,
            nickname,
        });
        if self.held() * 2 <= self.peak {
            self.peak = self.held();
            self.give_back = crossbeam_channel::after(GIVE_BACK_AFTER);
        }
    }

    /// The sessions whose window has ended without their client: they leave now.
    fn expire_sessions(&mut self) {
        let now = Instant::now();
        self.waiting_seats.retain(|_, (until, _)| *until > now);
        for session in self.sessions.expired(now) {
            self.announce_leave(
                session.holder,
                session.number,
                session.nickname,
                "a dropped connection",
            );
        }
        if !self.sessions.any_detached() && self.waiting_seats.is_empty() {
            self.expiry = crossbeam_channel::never();
        }
        self.stop_numbering_if_unused();
    }

    /// What the room holds memory for: its members, and sessions (a member's session counts
    /// twice, which only makes the room give memory back a little later).
    fn held(&self) -> usize {
        self.members.len() + self.sessions.len()
    }

    /// Whether lines are numbered for the resume dialect: while there are sessions, and
    /// always in a cluster, where a session may come back from another instance.
    fn numbering(&self) -> bool {
        self.order.is_shared() || !self.sessions.is_empty()
    }

    /// With no session left, nothing reads the numbered log or resumes into it.
    fn stop_numbering_if_unused(&mut self) {
        if !self.numbering() {
            self.logs[1].keep(0);
            self.sessions.forget_lines();
        }
    }

    /// Asks the order for a place, and acts on an answer that comes at once.
    fn place(&mut self, item: Item) {
        match self.order.place(item) {
            Placement::Now(entry) => self.placed(entry),
            Placement::Later => {}
            Placement::Refused(item, why) => self.refused(item, why),
        }
    }

    /// A line has its place: everyone gets it. A newcomer's join makes it a member, reading
    /// from its own join line on.
    fn placed(&mut self, entry: Entry) {
        if let Some(resumed) = entry.resumed {
            return self.resumed(resumed);
        }
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
        self.peak = self.peak.max(self.held());
        let at = self.append_line(&entry.line, entry.position);
        self.start_reading(id, &outbox, at[outbox.dialect as usize]);
        self.say_early_lines(id);
        if newcomer.gone {
            self.handle_close_connection(id, Departure::Left);
        }
    }

    /// A session for a newcomer of the resume dialect: it hears its token first, before its
    /// own join line (after the mark that lines were missed, when `missed`). A shared order
    /// keeps the session itself; here only this instance's table does.
    fn open_session(&mut self, id: ClientId, member: &Member, missed: bool) {
        let Some(token) = &member.session else {
            return;
        };
        if !self.numbering() {
            // From now on the numbered log keeps the recent past for clients that come back.
            self.logs[1].keep(self.logs[1].reader().retention());
        }
        if !self.order.is_shared() {
            // Its join line goes at the head: nothing before it is ever its to get back.
            let joins_at = self.logs[1].head();
            self.sessions
                .open(token, id, &member.nickname, member.number, joins_at);
        }
        let writer = &self.writers[member.outbox.writer];
        if missed {
            let _ = writer.push(&member.outbox, wire::text_frame(MISSED_MARK));
        }
        let _ = writer.push(
            &member.outbox,
            wire::text_frame(&format!("session {token}")),
        );
    }

    /// A line that got no place: only the client concerned hears of it.
    fn refused(&mut self, item: Item, why: Refusal) {
        match item {
            Item::Join { id, .. } => {
                let Some(mut newcomer) = self.newcomers.remove(&id) else {
                    return;
                };
                self.taken.remove(&newcomer.member.number);
                if newcomer.gone {
                    // Its writer still sends the close its reader queued.
                    return self.turn_away(id, &newcomer.member.outbox, UNREACHABLE);
                }
                if why != Refusal::Taken {
                    return self.turn_away(id, &newcomer.member.outbox, UNREACHABLE);
                }
                let drawn = if newcomer.draws < MOST_DRAWS {
                    self.free_number()
                } else {
                    None
                };
                let Some(number) = drawn else {
                    return self.turn_away(id, &newcomer.member.outbox, NO_NAME_FREE);
                };
                newcomer.member.number = number;
                newcomer.member.nickname = format!("user-{number}");
                newcomer.draws += 1;
                self.ask_to_join(id, newcomer);
            }
            Item::Say { id, .. } => {
                if let Some(sender) = self.members.get(&id) {
                    let outbox = sender.outbox.clone();
                    let notice = wire::notice(outbox.dialect, NOT_SENT);
                    let _ = self.writers[outbox.writer].push(&outbox, notice);
                }
            }
            Item::Resume { id, .. } => {
                let Some(resumer) = self.resumers.remove(&id) else {
                    return;
                };
                match (resumer.gone, why) {
                    // Unknown: a fresh session, after the mark. Never an error loop.
                    (None, Refusal::Unknown) => self.handle_new_connection(
                        id,
                        resumer.from,
                        resumer.outbox,
                        resumer.seat,
                        Some(true),
                    ),
                    // Redis out of reach: close 1013, and the session is still there to
                    // resume once it is back.
                    _ => self.turn_away(id, &resumer.outbox, UNREACHABLE),
                }
            }
            // An order keeps a leave until it can place it.
            Item::Leave { .. } | Item::Detach { .. } => {}
        }
    }

    /// After a storm of joins and leaves, gives back the memory the departed held: the
    /// tables' spare room, log segments nobody reads any more, and the heap the readers freed. It runs each time the room has
    /// halved since the last time, down to empty, so it costs little however many leave.
    fn shrink(&mut self) {
        self.members.shrink_to_fit();
        self.taken.shrink_to_fit();
        self.sessions.shrink();
        self.early.shrink_to_fit();
        // Segments the departed were the last to read, appended after their writers let go.
        self.logs.iter().for_each(|log| log.reader().trim());
        sys::give_back_free_heap();
        self.give_back = crossbeam_channel::never();
    }

    /// Frames `line` once per dialect and appends it: to the plain log, and while there are
    /// sessions, after its position, to the numbered one. Returns where it starts in each.
    fn append_line(&mut self, line: &str, position: Option<Position>) -> [u64; 2] {
        self.trace.broadcast(self.members.len(), line);
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
        let at = self.logs[0].append(plain);
        if self.numbering() && !numbered.is_empty() {
            self.logs[1].append(numbered);
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

    /// The other instances announced our clients as left and freed their names (they took
    /// this instance for dead): every member must come back as a newcomer. Close 1012
    /// "service restart" tells browsers and scripts to reconnect.
    fn restart_everyone(&mut self) {
        eprintln!("threadchat: the other instances took this one for dead; closing every client");
        let restart = wire::close_frame(wire::CLOSE_SERVICE_RESTART, "service restart");
        for (_, member) in self.members.drain() {
            self.writers[member.outbox.writer].close(&member.outbox, Some(restart.clone()));
        }
        for (id, newcomer) in std::mem::take(&mut self.newcomers) {
            self.turn_away(id, &newcomer.member.outbox, UNREACHABLE);
        }
        for (id, resumer) in std::mem::take(&mut self.resumers) {
            self.turn_away(id, &resumer.outbox, UNREACHABLE);
        }
        self.taken.clear();
        self.waiting_seats.clear();
        // The others announced the sessions' clients too: they come back as newcomers.
        self.sessions = Sessions::new(self.sessions.window());
        self.expiry = crossbeam_channel::never();
        self.stop_numbering_if_unused();
        self.order.restarted();
    }

    /// Another client holds the member's name now (Redis lost it meanwhile): close 1012, so
    /// it comes back under another. The name is not this member's to announce.
    fn lose_name(&mut self, id: ClientId) {
        if let Some(member) = self.members.remove(&id) {
            let restart = wire::close_frame(wire::CLOSE_SERVICE_RESTART, "service restart");
            self.writers[member.outbox.writer].close(&member.outbox, Some(restart));
            self.taken.remove(&member.number);
            if let Some(token) = &member.session {
                self.sessions.close(token);
            }
        }
    }

    /// Sends close 1001 to every member; its writer shuts the socket after it. Then each
    /// leave is placed: after every close here, so only other instances' clients hear them.
    ///
    /// In a cluster the others carry on: close 1012 (service restart) tells every client to
    /// come back, and a resumable one resumes on another instance, unannounced: its session
    /// waits for it instead of its leave being placed.
    fn say_goodbye(&mut self) {
        let shared = self.order.is_shared();
        let bye = if shared {
            wire::close_frame(wire::CLOSE_SERVICE_RESTART, "service restart")
        } else {
            wire::close_frame(wire::CLOSE_GOING_AWAY, "server shutting down")
        };
        let members: Vec<(ClientId, Member)> = self.members.drain().collect();
        for (_, member) in &members {
            self.writers[member.outbox.writer].close(&member.outbox, Some(bye.clone()));
        }
        let waiting = std::mem::take(&mut self.newcomers)
            .into_iter()
            .map(|(id, newcomer)| (id, newcomer.member.outbox))
            .chain(
                std::mem::take(&mut self.resumers)
                    .into_iter()
                    .map(|(id, resumer)| (id, resumer.outbox)),
            );
        for (id, outbox) in waiting.collect::<Vec<_>>() {
            let head = self.logs[outbox.dialect as usize].head();
            self.start_reading(id, &outbox, head);
            self.writers[outbox.writer].close(&outbox, Some(bye.clone()));
        }
        for (_, member) in members {
            let (id, nickname) = (member.holder, member.nickname);
            self.place(match member.session {
                Some(_) if shared => Item::Detach {
                    id,
                    nickname,
                    wait: self.sessions.window(),
                    owed: self.sessions.position_at(owed_from(&member.outbox)),
                },
                _ => Item::Leave { id, nickname },
            });
        }
        // Sessions live in this process: waiting ones end with it.
        for session in self.sessions.take_detached() {
            self.place(Item::Leave {
                id: session.holder,
                nickname: session.nickname,
            });
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
        self.early.remove(&id);
        let head = self.logs[outbox.dialect as usize].head();
        self.start_reading(id, outbox, head);
        let sorry = wire::close_frame(wire::CLOSE_TRY_AGAIN_LATER, why);
        self.writers[outbox.writer].close(outbox, Some(sorry));
    }
}

/// Where the lines a connection that dropped (or was taken over) is still owed begin: after
/// those its writer handed to the kernel, less what the kernel may still have held for it,
/// its send buffer's worth, which may never have arrived.
fn owed_from(outbox: &Outbox) -> u64 {
    outbox
        .handed()
        .saturating_sub(sys::send_buffer_bytes(&outbox.socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Room {
        Room::new(
            [Log::new(1 << 20), Log::new(1 << 20)],
            Vec::new(),
            Order::Local,
            Duration::from_secs(120),
            Trace::new(false),
        )
    }

    #[test]
    fn a_clash_is_drawn_again_until_a_free_number_comes_up() {
        let mut room = room();
        // Every number but one is in use: a first draw clashes 99,999 times in 100,000.
        let free = 31_337;
        room.taken
            .extend((0..NICKNAME_SPACE).filter(|&n| n != free));
        assert_eq!(room.free_number(), Some(free));
        assert_eq!(
            room.taken.len(),
            NICKNAME_SPACE as usize,
            "and it is taken now"
        );
    }

    #[test]
    fn with_every_name_taken_a_newcomer_is_refused_at_once() {
        let mut room = room();
        room.taken.extend(0..NICKNAME_SPACE);
        let started = Instant::now();
        assert_eq!(room.free_number(), None);
        assert_eq!(room.taken.len(), NICKNAME_SPACE as usize);
        // A scan of the whole table, not a wait on chance: well under a second even
        // unoptimised (a timing decides nothing here but a hang).
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn numbers_are_drawn_from_the_whole_range_and_never_twice() {
        let mut room = room();
        let drawn: Vec<u32> = (0..1000).filter_map(|_| room.free_number()).collect();
        assert_eq!(drawn.len(), 1000);
        assert!(drawn.iter().all(|&n| n < NICKNAME_SPACE));
        assert_eq!(drawn.iter().collect::<HashSet<_>>().len(), drawn.len());
        // Of 1000 uniform draws, none in the top or bottom tenth: 2 x 0.9^1000, never.
        assert!(drawn.iter().any(|&n| n >= 90_000), "none of the highest");
        assert!(drawn.iter().any(|&n| n < 10_000), "none of the lowest");
    }

    #[test]
    fn a_half_full_room_still_draws_at_random() {
        let mut room = room();
        // Every even number is taken: the most a room holds (`config::MOST_CLIENTS`).
        room.taken.extend((0..NICKNAME_SPACE).step_by(2));
        let drawn: Vec<u32> = (0..1000).filter_map(|_| room.free_number()).collect();
        assert_eq!(drawn.len(), 1000);
        assert!(drawn.iter().all(|n| n % 2 == 1));
        // A scan from one start would hand out neighbours; draws spread over the range.
        assert!(drawn.iter().any(|&n| n >= 90_000) && drawn.iter().any(|&n| n < 10_000));
    }
}
