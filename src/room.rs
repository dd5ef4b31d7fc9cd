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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver};

use crate::event::{ClientId, Entry, Event, Item, Refusal};
use crate::log::Log;
use crate::order::{Order, Placement};
use crate::outbox::Outbox;
use crate::sys;
use crate::trace::Trace;
use crate::wire;
use crate::writer::Writer;

/// Nicknames are `user-N` with N drawn from `0..NICKNAME_SPACE`, as in the cookbook.
pub const NICKNAME_SPACE: u32 = 100_000;

/// How long after the room has halved it gives memory back: the departed clients' threads
/// free their buffers just after their leave reaches the room.
const GIVE_BACK_AFTER: Duration = Duration::from_secs(1);

/// Draws of a nickname that other instances hold before a newcomer is turned away.
const MOST_DRAWS: usize = 100;

/// What the sender alone hears when its line could not be placed.
const NOT_SENT: &str = " .... not sent: the room is unreachable";

/// What members hear where lines of the shared order were lost before they could be read.
const MISSED: &str = " .... some lines were missed here";

/// A connected client as the room sees it.
struct Member {
    number: u32,
    nickname: String,
    from: String,
    outbox: Arc<Outbox>,
}

/// A newcomer whose join waits for its place.
struct Newcomer {
    member: Member,
    /// Nicknames drawn for it so far.
    draws: usize,
    /// It left before its join was placed: announce the leave right after the join.
    gone: bool,
}

/// The nickname table and everything the broadcaster decides.
pub struct Room {
    members: HashMap<ClientId, Member>,
    newcomers: HashMap<ClientId, Newcomer>,
    /// The N of every `user-N` in use here, so a join finds a free name without a scan.
    taken: HashSet<u32>,
    /// Where each line gets its place: this log, or a stream shared with other instances.
    order: Order,
    /// Every line, in the one order every member sees.
    log: Log,
    /// Woken after each append, so that none sleeps through a line.
    writers: Vec<Arc<Writer>>,
    /// The most members since memory was last given back.
    peak: usize,
    /// Fires when it is time to give memory back; `never` until the room has halved.
    give_back: Receiver<Instant>,
    trace: Trace,
}

impl Room {
    pub fn new(log: Log, writers: Vec<Arc<Writer>>, order: Order, trace: Trace) -> Room {
        Room {
            members: HashMap::new(),
            newcomers: HashMap::new(),
            taken: HashSet::new(),
            order,
            log,
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
                    Ok(Event::Join { id, from, outbox }) => self.handle_new_connection(id, from, outbox),
                    Ok(Event::Say { id, text }) => self.broadcast_to_room(id, text.as_str()),
                    Ok(Event::Leave { id }) => self.handle_close_connection(id),
                    Ok(Event::Stream(entries)) => entries.into_iter().for_each(|e| self.placed(e)),
                    Ok(Event::Refused(item, why)) => self.refused(item, why),
                    Ok(Event::Gap) => {
                        self.append_line(MISSED);
                    }
                    Ok(Event::Fenced) => self.restart_everyone(),
                    Ok(Event::NameLost { id }) => self.lose_name(id),
                    Ok(Event::Shutdown) | Err(_) => break,
                },
                recv(pings) -> _ => self.ping_everyone(),
                recv(self.give_back) -> _ => self.shrink(),
            }
        }
        self.say_goodbye();
    }

    /// Draws a free `user-N` for the newcomer and asks a place for its join. Once placed,
    /// everyone hears it, the newcomer first of all.
    fn handle_new_connection(&mut self, id: ClientId, from: String, outbox: Arc<Outbox>) {
        let number = self.free_number();
        let newcomer = Newcomer {
            member: Member {
                number,
                nickname: format!("user-{number}"),
                from,
                outbox,
            },
            draws: 1,
            gone: false,
        };
        self.ask_to_join(id, newcomer);
    }

    fn ask_to_join(&mut self, id: ClientId, newcomer: Newcomer) {
        let nickname = newcomer.member.nickname.clone();
        self.newcomers.insert(id, newcomer);
        self.place(Item::Join { id, nickname });
    }

    /// Prefixes the sender's nickname and sends the line to every member, sender included.
    fn broadcast_to_room(&mut self, id: ClientId, text: &str) {
        let Some(sender) = self.members.get(&id) else {
            return; // evicted while its message was on the way
        };
        let line = format!("{}: {}", sender.nickname, text);
        self.place(Item::Say { id, line });
    }

    /// Frees the nickname and tells the others. Every departure is reported once, whether
    /// the client closed, vanished, or was evicted by its writer.
    fn handle_close_connection(&mut self, id: ClientId) {
        if let Some(newcomer) = self.newcomers.get_mut(&id) {
            newcomer.gone = true;
            return;
        }
        let Some(gone) = self.members.remove(&id) else {
            return;
        };
        self.taken.remove(&gone.number);
        eprintln!("leave {} from {}", gone.nickname, gone.from);
        self.trace.decision(&gone.nickname, "left the room");
        self.place(Item::Leave {
            id,
            nickname: gone.nickname,
        });
        if self.members.len() * 2 <= self.peak {
            self.peak = self.members.len();
            self.give_back = crossbeam_channel::after(GIVE_BACK_AFTER);
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
        let Some((id, newcomer)) = entry
            .joined
            .and_then(|id| Some((id, self.newcomers.remove(&id)?)))
        else {
            self.append_line(&entry.line);
            return;
        };
        let member = newcomer.member;
        let outbox = member.outbox.clone();
        let _ = outbox.nickname.set(member.nickname.clone());
        eprintln!("join  {} from {}", member.nickname, member.from);
        self.trace.decision(&member.nickname, "joined the room");
        self.members.insert(id, member);
        self.peak = self.peak.max(self.members.len());
        let at = self.append_line(&entry.line);
        self.start_reading(id, &outbox, at);
        if newcomer.gone {
            self.handle_close_connection(id);
        }
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
                    return self.turn_away(id, &newcomer.member.outbox);
                }
                if why == Refusal::Taken && newcomer.draws < MOST_DRAWS {
                    let number = self.free_number();
                    newcomer.member.number = number;
                    newcomer.member.nickname = format!("user-{number}");
                    newcomer.draws += 1;
                    return self.ask_to_join(id, newcomer);
                }
                self.turn_away(id, &newcomer.member.outbox);
            }
            Item::Say { id, .. } => {
                if let Some(sender) = self.members.get(&id) {
                    let outbox = sender.outbox.clone();
                    let _ = self.writers[outbox.writer].push(&outbox, wire::text_frame(NOT_SENT));
                }
            }
            // An order keeps a leave until it can place it.
            Item::Leave { .. } => {}
        }
    }

    /// After a storm of joins and leaves, gives back the memory the departed held: the
    /// tables' spare room, log segments nobody reads any more, and the heap the readers freed. It runs each time the room has
    /// halved since the last time, down to empty, so it costs little however many leave.
    fn shrink(&mut self) {
        self.members.shrink_to_fit();
        self.taken.shrink_to_fit();
        // Segments the departed were the last to read, appended after their writers let go.
        self.log.reader().trim();
        sys::give_back_free_heap();
        self.give_back = crossbeam_channel::never();
    }

    /// Frames `line` once, appends it to the log, and returns where it starts.
    fn append_line(&mut self, line: &str) -> u64 {
        self.trace.broadcast(self.members.len(), line);
        self.append(&wire::text_frame(line))
    }

    /// Appends a frame for everyone and wakes any writer that is asleep.
    fn append(&mut self, frame: &[u8]) -> u64 {
        let at = self.log.append(frame);
        for writer in &self.writers {
            writer.wake();
        }
        at
    }

    /// One shared ping in the log, for everyone.
    fn ping_everyone(&mut self) {
        self.append(&wire::ping_frame());
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
            self.turn_away(id, &newcomer.member.outbox);
        }
        self.taken.clear();
        self.order.restarted();
    }

    /// Another client holds the member's name now (Redis lost it meanwhile): close 1012, so
    /// it comes back under another. The name is not this member's to announce.
    fn lose_name(&mut self, id: ClientId) {
        if let Some(member) = self.members.remove(&id) {
            let restart = wire::close_frame(wire::CLOSE_SERVICE_RESTART, "service restart");
            self.writers[member.outbox.writer].close(&member.outbox, Some(restart));
            self.taken.remove(&member.number);
        }
    }

    /// Sends close 1001 to every member; its writer shuts the socket after it. Then each
    /// leave is placed: after every close here, so only other instances' clients hear them.
    fn say_goodbye(&mut self) {
        let bye = wire::close_frame(wire::CLOSE_GOING_AWAY, "server shutting down");
        let members: Vec<(ClientId, Member)> = self.members.drain().collect();
        for (_, member) in &members {
            self.writers[member.outbox.writer].close(&member.outbox, Some(bye.clone()));
        }
        for (id, newcomer) in std::mem::take(&mut self.newcomers) {
            let outbox = &newcomer.member.outbox;
            self.start_reading(id, outbox, self.log.head());
            self.writers[outbox.writer].close(outbox, Some(bye.clone()));
        }
        for (id, member) in members {
            self.place(Item::Leave {
                id,
                nickname: member.nickname,
            });
        }
        self.order.flush();
    }

    /// Draws N until it is free here and reserves it. A room holds at most half of the
    /// 100,000 names (`config::MOST_CLIENTS`), so even a full one finds a free name in two
    /// draws on average.
    fn free_number(&mut self) -> u32 {
        loop {
            let n = rand::random_range(0..NICKNAME_SPACE);
            if self.taken.insert(n) {
                return n;
            }
        }
    }

    /// The newcomer's writer starts sending it the log from `at`, its join line.
    fn start_reading(&self, id: ClientId, outbox: &Arc<Outbox>, at: u64) {
        self.writers[outbox.writer].add(id, outbox.clone(), self.log.cursor_at(at));
    }

    /// Closes a newcomer the room cannot take now (close 1013, try again later), or hands a
    /// newcomer that is already closing to its writer, which sends its last frame. It never
    /// joined, so nobody hears of it leaving.
    fn turn_away(&self, id: ClientId, outbox: &Arc<Outbox>) {
        self.start_reading(id, outbox, self.log.head());
        let sorry = wire::close_frame(
            wire::CLOSE_TRY_AGAIN_LATER,
            "the room is unreachable; try again later",
        );
        self.writers[outbox.writer].close(outbox, Some(sorry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Room {
        Room::new(
            Log::new(1 << 20),
            Vec::new(),
            Order::Local,
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
        assert_eq!(room.free_number(), free);
        assert_eq!(
            room.taken.len(),
            NICKNAME_SPACE as usize,
            "and it is taken now"
        );
    }

    #[test]
    fn numbers_are_drawn_from_the_whole_range_and_never_twice() {
        let mut room = room();
        let drawn: Vec<u32> = (0..1000).map(|_| room.free_number()).collect();
        assert!(drawn.iter().all(|&n| n < NICKNAME_SPACE));
        assert_eq!(drawn.iter().collect::<HashSet<_>>().len(), drawn.len());
        // Of 1000 uniform draws, none in the top or bottom tenth: 2 x 0.9^1000, never.
        assert!(drawn.iter().any(|&n| n >= 90_000), "none of the highest");
        assert!(drawn.iter().any(|&n| n < 10_000), "none of the lowest");
    }
}
