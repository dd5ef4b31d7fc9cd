//! The room: one broadcaster thread that owns the nickname table.
//!
//! In the cookbook, `*connections*` is a global hash table that every connection's
//! handler mutates. Here a single thread owns the table, and client threads only talk to
//! it by sending [`Event`]s over a channel. Because one thread decides the order of every
//! line, any two clients that are connected throughout see the same lines in the same
//! order, and the table needs no lock.
//!
//! The broadcaster never touches a socket. Each line is framed once, and the same bytes
//! are queued in every member's [`Outbox`]; the flusher thread does the slow part. A
//! member whose outbox is full is evicted rather than waited for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, tick, Receiver};
use tungstenite::Utf8Bytes;

use crate::outbox::{Outbox, Refused};
use crate::trace::Trace;
use crate::wire;

/// Nicknames are `user-N` with N drawn from `0..NICKNAME_SPACE`, as in the cookbook.
pub const NICKNAME_SPACE: u32 = 100_000;

/// Identifies one connection for its whole life, before and after it has a nickname.
pub type ClientId = u64;

/// What client threads (and the signal thread) tell the room.
pub enum Event {
    /// A handshake finished: give this connection a nickname and announce it.
    Join {
        id: ClientId,
        peer: SocketAddr,
        outbox: Arc<Outbox>,
    },
    /// A text message arrived from a member.
    Say { id: ClientId, text: Utf8Bytes },
    /// A connection ended, for whatever reason.
    Leave { id: ClientId },
    /// The server is stopping: say goodbye to everyone.
    Shutdown,
}

/// A connected client as the room sees it.
struct Member {
    number: u32,
    nickname: String,
    peer: SocketAddr,
    outbox: Arc<Outbox>,
}

/// The nickname table and everything the broadcaster decides.
pub struct Room {
    members: HashMap<ClientId, Member>,
    /// The N of every `user-N` in use, so a join finds a free name without a scan.
    taken: HashSet<u32>,
    trace: Trace,
}

impl Room {
    pub fn new(trace: Trace) -> Room {
        Room {
            members: HashMap::new(),
            taken: HashSet::new(),
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
                    Ok(Event::Join { id, peer, outbox }) => self.handle_new_connection(id, peer, outbox),
                    Ok(Event::Say { id, text }) => self.broadcast_to_room(id, text.as_str()),
                    Ok(Event::Leave { id }) => self.handle_close_connection(id),
                    Ok(Event::Shutdown) | Err(_) => break,
                },
                recv(pings) -> _ => self.ping_everyone(),
            }
        }
        self.say_goodbye();
    }

    /// Gives the newcomer a free `user-N` and tells everyone, the newcomer first of all.
    fn handle_new_connection(&mut self, id: ClientId, peer: SocketAddr, outbox: Arc<Outbox>) {
        let number = self.free_number();
        let nickname = format!("user-{number}");
        let _ = outbox.nickname.set(nickname.clone());
        eprintln!("join  {nickname} from {peer}");
        self.trace.decision(&nickname, "joined the room");
        let line = format!(" .... {nickname} has joined.");
        self.members.insert(
            id,
            Member {
                number,
                nickname,
                peer,
                outbox,
            },
        );
        self.send_to_all(line);
    }

    /// Prefixes the sender's nickname and sends the line to every member, sender included.
    fn broadcast_to_room(&mut self, id: ClientId, text: &str) {
        let Some(sender) = self.members.get(&id) else {
            return; // evicted while its message was on the way
        };
        let line = format!("{}: {}", sender.nickname, text);
        self.send_to_all(line);
    }

    /// Frees the nickname and tells the others. A second leave for the same id (the
    /// client's thread reporting after the room already evicted it) is ignored, so each
    /// departure is announced exactly once.
    fn handle_close_connection(&mut self, id: ClientId) {
        if let Some(line) = self.remove(id) {
            self.send_to_all(line);
        }
    }

    /// Takes a member out of the table and returns the line that announces it.
    fn remove(&mut self, id: ClientId) -> Option<String> {
        let gone = self.members.remove(&id)?;
        self.taken.remove(&gone.number);
        eprintln!("leave {} from {}", gone.nickname, gone.peer);
        self.trace.decision(&gone.nickname, "left the room");
        Some(format!(" .... {} has left.", gone.nickname))
    }

    /// Frames `line` once and queues the same bytes for every member.
    ///
    /// A member too far behind is evicted, and its leave is one more line to send; a
    /// loop rather than recursion, so a burst of evictions cannot grow the stack.
    fn send_to_all(&mut self, line: String) {
        let mut lines = VecDeque::from([line]);
        while let Some(line) = lines.pop_front() {
            let frame = wire::text_frame(&line);
            let mut too_slow = Vec::new();
            for (&id, member) in &self.members {
                if member.outbox.push(frame.clone()) == Err(Refused::Full) {
                    too_slow.push(id);
                }
            }
            self.trace
                .broadcast(self.members.len() - too_slow.len(), &line);
            for id in too_slow {
                self.evict(id);
                lines.extend(self.remove(id));
            }
        }
    }

    /// Gives up on a member: the flusher sends it close 1008 and shuts the socket, and
    /// the client's reader then ends.
    fn evict(&self, id: ClientId) {
        if let Some(member) = self.members.get(&id) {
            self.trace.decision(&member.nickname, "evicted: too slow");
            member.outbox.evict();
        }
    }

    /// Queues one shared ping for everyone. A client whose queue is full gets none: the
    /// next line will evict it.
    fn ping_everyone(&mut self) {
        let ping = wire::ping_frame();
        for member in self.members.values() {
            let _ = member.outbox.push(ping.clone());
        }
        self.trace.pinged(self.members.len());
    }

    /// Sends close 1001 to every member; the flusher shuts each socket after it.
    fn say_goodbye(&mut self) {
        let bye = wire::close_frame(wire::CLOSE_GOING_AWAY, "server shutting down");
        for member in self.members.values() {
            member.outbox.push_last(bye.clone());
        }
        self.members.clear();
    }

    /// Draws N until it is free and reserves it. A room holds at most half of the 100,000
    /// names (`config::MOST_CLIENTS`), so even a full one finds a free name in two draws
    /// on average.
    fn free_number(&mut self) -> u32 {
        loop {
            let n = rand::random_range(0..NICKNAME_SPACE);
            if self.taken.insert(n) {
                return n;
            }
        }
    }
}
