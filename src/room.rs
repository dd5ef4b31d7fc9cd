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
//! With `--redis` several instances share the room ([`Cluster`]): the room adds its lines to
//! the cluster's stream instead of its log, and appends what the stream thread reads back,
//! everyone's lines in the stream's one order. A newcomer starts reading at its own join
//! line when that line comes back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver};
use tungstenite::Utf8Bytes;

use crate::cluster::{Cluster, Entry, Unreachable};
use crate::log::Log;
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

/// How often leaves that could not reach the cluster are tried again.
const RETRY_OWED_EVERY: Duration = Duration::from_secs(1);

/// Draws of a nickname that other instances hold before a newcomer is turned away.
const MOST_DRAWS: usize = 100;

/// What the sender alone hears when its line cannot reach the cluster.
const NOT_SENT: &str = " .... not sent: the room is unreachable";

/// Identifies one connection for its whole life, before and after it has a nickname.
pub type ClientId = u64;

/// What client threads (and the signal thread) tell the room.
pub enum Event {
    /// A handshake finished: give this connection a nickname and announce it.
    Join {
        id: ClientId,
        /// The client's address, for the join/leave log.
        from: String,
        outbox: Arc<Outbox>,
    },
    /// A text message arrived from a member.
    Say { id: ClientId, text: Utf8Bytes },
    /// A connection ended, for whatever reason.
    Leave { id: ClientId },
    /// Lines the stream thread read back from the cluster, in the cluster's order.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Stream(Vec<Entry>),
    /// The server is stopping: say goodbye to everyone.
    Shutdown,
}

/// A connected client as the room sees it.
struct Member {
    number: u32,
    nickname: String,
    from: String,
    outbox: Arc<Outbox>,
}

/// The nickname table and everything the broadcaster decides.
pub struct Room {
    members: HashMap<ClientId, Member>,
    /// The N of every `user-N` in use, so a join finds a free name without a scan.
    taken: HashSet<u32>,
    /// Every line, in the one order every member sees.
    log: Log,
    /// Woken after each append, so that none sleeps through a line.
    writers: Vec<Arc<Writer>>,
    /// The most members since memory was last given back.
    peak: usize,
    /// Fires when it is time to give memory back; `never` until the room has halved.
    give_back: Receiver<Instant>,
    /// The other instances sharing the room, if any.
    cluster: Option<Cluster>,
    /// Nicknames whose leave could not reach the cluster yet.
    owed: Vec<String>,
    trace: Trace,
}

impl Room {
    pub fn new(
        log: Log,
        writers: Vec<Arc<Writer>>,
        cluster: Option<Cluster>,
        trace: Trace,
    ) -> Room {
        Room {
            members: HashMap::new(),
            taken: HashSet::new(),
            log,
            writers,
            peak: 0,
            give_back: crossbeam_channel::never(),
            cluster,
            owed: Vec::new(),
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
        let retries = match self.cluster {
            Some(_) => tick(RETRY_OWED_EVERY),
            None => crossbeam_channel::never(),
        };
        loop {
            select! {
                recv(events) -> event => match event {
                    Ok(Event::Join { id, from, outbox }) => self.handle_new_connection(id, from, outbox),
                    Ok(Event::Say { id, text }) => self.broadcast_to_room(id, text.as_str()),
                    Ok(Event::Leave { id }) => self.handle_close_connection(id),
                    Ok(Event::Stream(entries)) => self.take_from_stream(entries),
                    Ok(Event::Shutdown) | Err(_) => break,
                },
                recv(pings) -> _ => self.ping_everyone(),
                recv(self.give_back) -> _ => self.shrink(),
                recv(retries) -> _ => self.pay_owed(),
            }
        }
        self.say_goodbye();
    }

    /// Gives the newcomer a free `user-N` and tells everyone, the newcomer first of all.
    fn handle_new_connection(&mut self, id: ClientId, from: String, outbox: Arc<Outbox>) {
        let Ok(number) = self.claim_free_number() else {
            return turn_away(&self.log, &outbox);
        };
        let nickname = format!("user-{number}");
        let _ = outbox.nickname.set(nickname.clone());
        let line = format!(" .... {nickname} has joined.");
        if let Some(cluster) = &mut self.cluster {
            // Its cursor starts when this line comes back through the stream.
            if cluster.publish(&line, Some(id)).is_err() {
                let _ = cluster.release(&nickname);
                self.taken.remove(&number);
                return turn_away(&self.log, &outbox);
            }
        }
        eprintln!("join  {nickname} from {from}");
        self.trace.decision(&nickname, "joined the room");
        self.members.insert(
            id,
            Member {
                number,
                nickname,
                from,
                outbox: outbox.clone(),
            },
        );
        self.peak = self.peak.max(self.members.len());
        if self.cluster.is_none() {
            // The newcomer's cursor starts at its own join line: it sees everything from there.
            let joined_at = self.append_line(&line);
            start_reading(&self.log, &outbox, joined_at);
        }
    }

    /// Prefixes the sender's nickname and sends the line to every member, sender included.
    fn broadcast_to_room(&mut self, id: ClientId, text: &str) {
        let Some(sender) = self.members.get(&id) else {
            return; // evicted while its message was on the way
        };
        let line = format!("{}: {}", sender.nickname, text);
        let outbox = sender.outbox.clone();
        if self.send_to_all(&line).is_err() {
            let _ = outbox.push(wire::text_frame(NOT_SENT));
        }
    }

    /// Frees the nickname and tells the others. The reader reports every departure once,
    /// whether the client closed, vanished, or was evicted by its writer.
    fn handle_close_connection(&mut self, id: ClientId) {
        let Some(gone) = self.members.remove(&id) else {
            return;
        };
        self.taken.remove(&gone.number);
        eprintln!("leave {} from {}", gone.nickname, gone.from);
        self.trace.decision(&gone.nickname, "left the room");
        match &mut self.cluster {
            None => {
                self.append_line(&format!(" .... {} has left.", gone.nickname));
            }
            Some(_) => {
                self.owed.push(gone.nickname);
                self.pay_owed();
            }
        }
        if self.members.len() * 2 <= self.peak {
            self.peak = self.members.len();
            self.give_back = crossbeam_channel::after(GIVE_BACK_AFTER);
        }
    }

    /// Announces the leaves that could not reach the cluster before, and frees their names.
    fn pay_owed(&mut self) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        self.owed.retain(|nickname| {
            let line = format!(" .... {nickname} has left.");
            let paid = cluster.release(nickname).is_ok() && cluster.publish(&line, None).is_ok();
            !paid
        });
    }

    /// Appends lines read back from the cluster's stream; a join of ours starts its reader.
    fn take_from_stream(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let at = self.append_line(&entry.line);
            let Some((instance, id)) = entry.joined else {
                continue;
            };
            let ours = self
                .cluster
                .as_ref()
                .is_some_and(|c| c.instance() == instance);
            if let Some(member) = self.members.get(&id).filter(|_| ours) {
                start_reading(&self.log, &member.outbox, at);
            }
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

    /// Sends a line to everyone: into the log, or into the cluster's stream, from which every
    /// instance appends it to its own log.
    fn send_to_all(&mut self, line: &str) -> Result<(), Unreachable> {
        match &mut self.cluster {
            Some(cluster) => cluster.publish(line, None),
            None => {
                self.append_line(line);
                Ok(())
            }
        }
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

    /// Sends close 1001 to every member; its writer shuts the socket after it. In a
    /// cluster, the other instances' clients hear that ours have left.
    fn say_goodbye(&mut self) {
        let bye = wire::close_frame(wire::CLOSE_GOING_AWAY, "server shutting down");
        for member in self.members.values() {
            member.outbox.push_last(bye.clone());
        }
        if self.cluster.is_some() {
            self.owed
                .extend(self.members.drain().map(|(_, member)| member.nickname));
            self.pay_owed();
        }
        self.members.clear();
    }

    /// Draws N until it is free and reserves it, here and, in a cluster, in Redis.
    fn claim_free_number(&mut self) -> Result<u32, Unreachable> {
        for _ in 0..MOST_DRAWS {
            let number = self.free_number();
            let Some(cluster) = &mut self.cluster else {
                return Ok(number);
            };
            match cluster.claim(&format!("user-{number}")) {
                Ok(true) => return Ok(number),
                Ok(false) => {} // another instance has it
                Err(e) => {
                    self.taken.remove(&number);
                    return Err(e);
                }
            }
            self.taken.remove(&number);
        }
        Err(Unreachable)
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
}

/// The newcomer's writer starts sending it the log from `at`, its join line.
fn start_reading(log: &Log, outbox: &Arc<Outbox>, at: u64) {
    outbox.writer().add(outbox.clone(), log.cursor_at(at));
}

/// Closes a newcomer the room cannot take now (close 1013, try again later).
fn turn_away(log: &Log, outbox: &Arc<Outbox>) {
    start_reading(log, outbox, log.head());
    outbox.push_last(wire::close_frame(
        wire::CLOSE_TRY_AGAIN_LATER,
        "the room is unreachable; try again later",
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Room {
        Room::new(Log::new(1 << 20), Vec::new(), None, Trace::new(false))
    }

    #[test]
    fn a_clash_is_drawn_again_until_a_free_number_comes_up() {
        let mut room = room();
        // Every number but one is in use: a first draw clashes 99,999 times in 100,000.
        let free = 31_337;
        room.taken
            .extend((0..NICKNAME_SPACE).filter(|&n| n != free));
        assert_eq!(room.claim_free_number(), Ok(free));
        assert_eq!(
            room.taken.len(),
            NICKNAME_SPACE as usize,
            "and it is taken now"
        );
    }

    #[test]
    fn numbers_are_drawn_from_the_whole_range_and_never_twice() {
        let mut room = room();
        let drawn: Vec<u32> = (0..1000)
            .map(|_| room.claim_free_number().unwrap())
            .collect();
        assert!(drawn.iter().all(|&n| n < NICKNAME_SPACE));
        assert_eq!(drawn.iter().collect::<HashSet<_>>().len(), drawn.len());
        // Of 1000 uniform draws, none in the top or bottom tenth: 2 x 0.9^1000, never.
        assert!(drawn.iter().any(|&n| n >= 90_000), "none of the highest");
        assert!(drawn.iter().any(|&n| n < 10_000), "none of the lowest");
    }
}
