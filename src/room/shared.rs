//! The room's side of a shared order (`--redis`), compiled in `order.rs`'s place by a build
//! with the `redis` feature. The [`Order`] hands the room's items to the cluster's publisher
//! and keeps what waits for an answer; the room hears the answers as [`News`], on a channel
//! of their own: lines read back from the stream, a resume placed by any instance, a line or
//! join refused, and what the cluster tells it of itself (fenced by the others, a name lost
//! while Redis had forgotten it). Sessions live in Redis, for whichever instance a client
//! reaches. Run without `--redis`, the order is this instance's log, as in a plain build.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvError};
use tungstenite::Utf8Bytes;

use super::*;

#[path = "shared/fenced.rs"]
mod fenced;
pub use crate::cluster::News;
use crate::cluster::{Item, Placement, Publisher, Refusal, Resumed, Streamed};
use crate::config::Config;
use crate::wire::Frame;

/// A client presenting a session to a shared order, waiting for the answer.
pub(super) struct Resumer {
    returning: Returning,
    /// It left while waiting, and how.
    gone: Option<Departure>,
}

/// Close 1012 "service restart": come back, to this instance or another.
const CLOSE_SERVICE_RESTART: u16 = 1012;

/// Draws of a nickname that other instances hold before a newcomer is turned away.
const MOST_DRAWS: usize = 100;

/// Close reasons for a client the room cannot take now (close 1013, try again later).
const UNREACHABLE: &str = "the room is unreachable; try again later";

/// What the sender alone hears when its line could not be placed.
const NOT_SENT: &str = " .... not sent: the room is unreachable";

/// What members hear where lines of the shared order were lost before they could be read.
const MISSED: &str = " .... some lines were missed here";

/// Lines a newcomer may say before its join is placed (in a cluster, a round trip to Redis
/// away): they are placed right after its join. More are refused aloud.
const EARLY_LINES_MOST: usize = 32;
/// What a newcomer hears for a line past [`EARLY_LINES_MOST`] said before its join.
const NOT_YET: &str = " .... not sent: you have not joined yet";

/// A place asked for: `Some` line placed now (this instance's log), or `None` when it comes
/// back later as news; `Err`, refused at once.
pub type Answer = Result<Option<Entry>, News>;

/// The order lines are placed in, and what waits for its answers.
pub struct Order {
    /// The cluster's publisher; `None`: this instance's own log.
    publisher: Option<Publisher>,
    news: Receiver<News>,
    resumers: HashMap<ClientId, Resumer>,
    /// The seats of this instance's clients whose sessions wait in Redis, until the window
    /// ends or the session is resumed here, by its holder.
    waiting_seats: HashMap<ClientId, (Instant, Arc<Seat>)>,
    /// What newcomers and resumers said before they were members, said once they are.
    early: HashMap<ClientId, Vec<Utf8Bytes>>,
    /// Nicknames drawn so far for each newcomer whose join waits.
    draws: HashMap<ClientId, usize>,
    /// Newcomers that left while their join was on its way: their leave follows the join.
    gone: HashSet<ClientId>,
}

/// News waiting for the room, as many as events.
const NEWS_QUEUE: usize = 4096;

impl Order {
    /// The order `config` asks for: this instance's log, or with `--redis` a stream shared
    /// with other instances (this connects, prints the cluster line, and starts the
    /// cluster's threads, which tell the room their news on a channel of their own).
    pub fn start(config: &Config, trace: Trace) -> Result<Order, String> {
        let Some(url) = &config.redis else {
            return Ok(Order::local());
        };
        let (news, room_news) = crossbeam_channel::bounded(NEWS_QUEUE);
        let publisher = Publisher::start(
            url,
            config.redis_max_entries,
            config.resume_window,
            trace,
            news,
        )?;
        println!(
            "threadchat: room shared through {url} as instance {}",
            publisher.instance()
        );
        Ok(Order::with(Some(publisher), room_news))
    }

    pub fn local() -> Order {
        Order::with(None, crossbeam_channel::never())
    }

    fn with(publisher: Option<Publisher>, news: Receiver<News>) -> Order {
        Order {
            publisher,
            news,
            resumers: HashMap::new(),
            waiting_seats: HashMap::new(),
            early: HashMap::new(),
            draws: HashMap::new(),
            gone: HashSet::new(),
        }
    }

    pub fn news(&self) -> &Receiver<News> {
        &self.news
    }

    pub fn join(&mut self, id: ClientId, nickname: &str, session: Option<&Token>) -> Answer {
        if self.publisher.is_some() {
            *self.draws.entry(id).or_default() += 1;
        }
        let nickname = nickname.to_owned();
        let session = session.cloned();
        self.submit(
            Item::Join {
                id,
                nickname,
                session,
            },
            Some(id),
        )
    }

    pub fn say(&mut self, id: ClientId, line: String) -> Answer {
        self.submit(Item::Say { id, line }, None)
    }

    /// `holder`: the connection that joined under the name, which Redis checks still holds it.
    pub fn leave(&mut self, holder: ClientId, nickname: &str) -> Answer {
        let nickname = nickname.to_owned();
        self.submit(
            Item::Leave {
                id: holder,
                nickname,
            },
            None,
        )
    }

    /// Hands the item to the publisher; with none, places it in this log at once.
    fn submit(&mut self, item: Item, joined: Option<ClientId>) -> Answer {
        let Some(publisher) = &self.publisher else {
            return Ok(Some(Entry::placed(item.line(), joined)));
        };
        match publisher.submit(item) {
            Placement::Later => Ok(None),
            Placement::Refused(item, why) => Err(News::Refused(item, why)),
        }
    }

    /// In a cluster a session may come back here from any instance: every line is numbered.
    pub fn numbers_every_line(&self) -> bool {
        self.publisher.is_some()
    }

    /// In a cluster the others carry on: close 1012 (service restart) tells every client to
    /// come back, and a resumable one resumes on another instance.
    pub fn farewell(&self) -> Frame {
        match self.publisher {
            Some(_) => wire::close_frame(CLOSE_SERVICE_RESTART, "service restart"),
            None => wire::close_frame(wire::CLOSE_GOING_AWAY, "server shutting down"),
        }
    }

    pub fn seats_waiting(&self) -> usize {
        self.waiting_seats.len()
    }

    /// Ends the seats held for sessions waiting in Redis whose window has ended. `true` while
    /// some still wait.
    pub fn expire_seats(&mut self, now: Instant) -> bool {
        self.waiting_seats.retain(|_, (until, _)| *until > now);
        !self.waiting_seats.is_empty()
    }

    /// Clients waiting for a session's answer, to be let go.
    pub fn take_resumers(&mut self) -> Vec<(ClientId, Arc<Outbox>)> {
        let resumers = std::mem::take(&mut self.resumers).into_iter();
        resumers.map(|(id, r)| (id, r.returning.outbox)).collect()
    }

    /// A client turned away: what it said early, its draws, and its leaving, are forgotten.
    pub fn forget(&mut self, id: ClientId) {
        self.early.remove(&id);
        self.draws.remove(&id);
        self.gone.remove(&id);
    }

    pub fn shrink(&mut self) {
        self.early.shrink_to_fit();
        self.draws.shrink_to_fit();
    }

    /// The server is stopping: give what is waiting a moment to reach the others.
    pub fn flush(&mut self) {
        if let Some(publisher) = &self.publisher {
            publisher.flush();
        }
    }
}

impl Room {
    /// What the cluster tells the room.
    pub(super) fn hear(&mut self, news: Result<News, RecvError>) {
        let Ok(news) = news else {
            // The cluster's threads have all stopped: nothing more will come.
            self.order.news = crossbeam_channel::never();
            return;
        };
        match news {
            News::Stream(entries) => {
                for entry in entries {
                    match entry {
                        Streamed::Line(line) => {
                            let joined = line.joined;
                            self.placed(line);
                            if let Some(id) = joined {
                                self.joined(id);
                            }
                        }
                        Streamed::Resumed(resumed) => self.resumed(resumed),
                    }
                }
            }
            News::Refused(item, why) => self.refused(item, why),
            News::Gap => {
                figures::add(&figures::CLUSTER.gaps, 1);
                self.append(&wire::text_frame(MISSED), &wire::text_frame(MISSED_MARK));
            }
            News::Fenced => self.restart_everyone(),
            News::NameLost { id } => self.lose_name(id),
        }
    }

    /// A newcomer of this instance's is a member now; if it left while its join was on its
    /// way, its leave follows.
    fn joined(&mut self, id: ClientId) {
        self.order.draws.remove(&id);
        if self.order.gone.remove(&id) {
            self.handle_close_connection(id, Departure::Left);
        }
    }

    /// A client of the resume dialect presents a session: in a cluster it lives in Redis, and
    /// the answer comes back through the stream.
    pub(super) fn resume(&mut self, id: ClientId, returning: Returning) {
        if self.order.publisher.is_none() {
            return self.resume_here(id, returning);
        }
        let token = returning.token.clone();
        let resumer = Resumer {
            returning,
            gone: None,
        };
        self.order.resumers.insert(id, resumer);
        let answer = self.order.submit(Item::Resume { id, token }, None);
        self.place(answer);
    }

    /// A member of the resume dialect dropped: in a cluster its session waits in Redis, for
    /// whichever instance its client reaches, and its name is no longer this room's to give.
    pub(super) fn detach(&mut self, gone: &Member, token: &Token, wait: Duration) {
        if self.order.publisher.is_none() {
            return self.detach_here(gone, token, wait);
        }
        self.taken.remove(&gone.number);
        let until = Instant::now() + wait;
        self.order
            .waiting_seats
            .insert(gone.holder, (until, gone.seat.clone()));
        self.place_detach(gone, wait);
    }

    /// Hands the publisher the session's detach: its leave comes once `wait` has ended.
    fn place_detach(&mut self, gone: &Member, wait: Duration) {
        let owed = self.sessions.position_at(owed_from(&gone.outbox));
        let item = Item::Detach {
            id: gone.holder,
            nickname: gone.nickname.clone(),
            wait,
            owed,
        };
        let answer = self.order.submit(item, None);
        self.place(answer);
    }

    /// A newcomer's session: in a cluster, its join opened it in Redis.
    pub(super) fn open_session_table(&mut self, id: ClientId, member: &Member, token: &Token) {
        if self.order.publisher.is_none() {
            self.open_session_here(id, member, token);
        }
    }

    /// The server stops. In a cluster a resumable member's session waits for it, for the
    /// window, instead of its leave being placed; any other member's leave is placed.
    pub(super) fn goodbye(&mut self, member: Member) {
        if self.order.publisher.is_some() && member.session.is_some() {
            let window = self.sessions.window();
            return self.place_detach(&member, window);
        }
        let answer = self.order.leave(member.holder, &member.nickname);
        self.place(answer);
    }

    /// A session moved between connections somewhere in the cluster. The connection that
    /// had it, if ours, is closed without a word (or was already gone); the one that takes
    /// it, if ours, comes back under its name.
    pub(super) fn resumed(&mut self, resumed: Resumed) {
        let Resumed {
            nickname,
            by,
            from,
            floor,
        } = resumed;
        if let Some(old) = from {
            self.order.waiting_seats.remove(&old);
        }
        if let Some(older) = from.and_then(|old| self.members.remove(&old)) {
            self.taken.remove(&older.number);
            self.taken_over(older);
        }
        if from.is_some() && by.is_none() {
            self.holds(&nickname, None);
        }
        let Some((id, resumer)) = by.and_then(|id| Some((id, self.order.resumers.remove(&id)?)))
        else {
            return;
        };
        self.holds(&nickname, Some(id));
        let number = nickname
            .strip_prefix("user-")
            .and_then(|n| n.parse().ok())
            .unwrap_or(NICKNAME_SPACE);
        self.taken.insert(number);
        let member = Member {
            number,
            nickname,
            from: resumer.returning.from,
            outbox: resumer.returning.outbox,
            seat: resumer.returning.seat,
            session: Some(resumer.returning.token),
            holder: id,
        };
        let floor = floor.map_or(0, |at| self.sessions.offset_of(at, self.logs[1].head()));
        self.take_back(id, member, resumer.returning.position, floor);
        if let Some(how) = resumer.gone {
            self.handle_close_connection(id, how);
        }
    }

    /// A line that got no place: only the client concerned hears of it.
    pub(super) fn refused(&mut self, item: Item, why: Refusal) {
        match item {
            Item::Join { id, .. } => {
                let Some(mut newcomer) = self.newcomers.remove(&id) else {
                    return;
                };
                self.taken.remove(&newcomer.member.number);
                if self.order.gone.remove(&id) {
                    // Its writer still sends the close its reader queued.
                    return self.turn_away(id, &newcomer.member.outbox, UNREACHABLE);
                }
                if why != Refusal::Taken {
                    return self.turn_away(id, &newcomer.member.outbox, UNREACHABLE);
                }
                let draws = self.order.draws.get(&id).copied().unwrap_or(0);
                let drawn = if draws < MOST_DRAWS {
                    self.free_number()
                } else {
                    None
                };
                let Some(number) = drawn else {
                    return self.turn_away(id, &newcomer.member.outbox, NO_NAME_FREE);
                };
                newcomer.member.number = number;
                newcomer.member.nickname = format!("user-{number}");
                self.ask_to_join(id, newcomer);
            }
            Item::Say { id, .. } => {
                if let Some(sender) = self.members.get(&id) {
                    let outbox = sender.outbox.clone();
                    self.figures.line_refused("unreachable");
                    let notice = wire::notice(outbox.dialect, NOT_SENT);
                    let _ = self.writers[outbox.writer].push(&outbox, notice);
                }
            }
            Item::Resume { id, .. } => {
                let Some(Resumer { returning, gone }) = self.order.resumers.remove(&id) else {
                    return;
                };
                match (gone, why) {
                    // Unknown: a fresh session, after the mark. Never an error loop.
                    (None, Refusal::Unknown) => {
                        self.figures.resumed("unknown");
                        self.handle_new_connection(
                            id,
                            returning.from,
                            returning.outbox,
                            returning.seat,
                            Some(true),
                        )
                    }
                    // Redis out of reach: close 1013, and the session is still there to
                    // resume once it is back.
                    _ => {
                        self.figures.resumed("unreachable");
                        self.turn_away(id, &returning.outbox, UNREACHABLE)
                    }
                }
            }
            // An order keeps a leave until it can place it.
            Item::Leave { .. } | Item::Detach { .. } => {}
        }
    }

    /// A line from a client that is not a member yet: its join (or its resume) is on its way
    /// through a shared order. It is said once the client is a member; past
    /// [`EARLY_LINES_MOST`] the sender alone hears that it was not sent. A client that is
    /// neither was closed while its line was on the way, and its close said so.
    pub(super) fn hold_early_line(&mut self, id: ClientId, text: Utf8Bytes) {
        let outbox = match (self.newcomers.get(&id), self.order.resumers.get(&id)) {
            (Some(newcomer), _) => &newcomer.member.outbox,
            (None, Some(resumer)) => &resumer.returning.outbox,
            (None, None) => return,
        };
        let early = self.order.early.entry(id).or_default();
        if early.len() < EARLY_LINES_MOST {
            return early.push(text);
        }
        self.figures.line_refused("not_joined");
        let notice = wire::notice(outbox.dialect, NOT_YET);
        let _ = self.writers[outbox.writer].push(outbox, notice);
    }

    /// The client is a member now: what it said meanwhile is said, in order.
    pub(super) fn say_early_lines(&mut self, id: ClientId) {
        for text in self.order.early.remove(&id).unwrap_or_default() {
            self.broadcast_to_room(id, text);
        }
    }

    /// A client that left before it was a member (its join, or its resume, on its way): it
    /// is let go once the answer comes. `true` when it was one.
    pub(super) fn left_while_waiting(&mut self, id: ClientId, how: Departure) -> bool {
        if self.newcomers.contains_key(&id) {
            self.order.gone.insert(id);
            return true;
        }
        if let Some(resumer) = self.order.resumers.get_mut(&id) {
            resumer.gone = Some(how);
            return true;
        }
        false
    }

    /// A resumed session moved a name to this instance's client `Some(id)`, or away from
    /// this instance (`None`): the names it claims again if Redis loses them follow.
    fn holds(&mut self, nickname: &str, client: Option<ClientId>) {
        if let Some(publisher) = &self.order.publisher {
            publisher.holds(nickname, client);
        }
    }
}
