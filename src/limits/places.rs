//! The places of an HTTP port (the page's, the admin's): at most so many connections at once,
//! and a full port makes room rather than turn a newcomer away.
//!
//! A connection holds its place from accept until its thread ends. When every place is held,
//! the accepting thread closes the connection that has waited longest for a request head (or
//! sat idle longest between kept-alive requests), from the address that holds the most, and
//! admits the newcomer once that connection's thread has let go of its place. Otherwise a few
//! addresses, each holding idle connections and reopening them as their deadline closes them,
//! would keep the port from everybody else: from a visitor on the page port, from a health
//! check on the admin port. Only when every connection is being answered is the newcomer
//! refused, by the caller (503).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::limits::addresses;

/// The longest the accepting thread waits for a shed connection's thread to give its place
/// back. Woken from its read by the shutdown, that thread ends within microseconds; the
/// bound only keeps a thread the scheduler is slow to run from stalling every accept.
const SHED_WAIT: Duration = Duration::from_millis(500);

/// A full port says so in the log at most this often: under a flood of connections it makes
/// room many times a second.
const SHED_LOG_EVERY: Duration = Duration::from_secs(60);

/// One port's open connections and what each is doing, so that a full port can tell which
/// one to close to make room. Bounded by `max`; it is looked through only when full.
pub struct Places {
    /// Names the port in the log.
    port: &'static str,
    max: usize,
    registry: Mutex<Registry>,
    /// Signalled each time a connection gives its place back.
    freed: Condvar,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    held: HashMap<u64, Held>,
    last_logged: Option<Instant>,
}

/// One open connection.
struct Held {
    /// The connection's own socket, shared with its thread (one descriptor, not a
    /// duplicate): shutting it down wakes that thread from its read.
    socket: Arc<TcpStream>,
    seen: Seen,
}

/// What the choice of a connection to shed looks at.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// The peer, as the address table counts it. Behind a trusted proxy, the proxy.
    address: IpAddr,
    doing: Doing,
    /// Shut down to make room; its thread has yet to end.
    shed: bool,
}

/// What a connection is doing, as far as making room is concerned.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Doing {
    /// Waiting for a request head since then: since it was accepted, or since its last
    /// answer was written (kept alive). It holds a place and is owed nothing yet.
    Waiting(Instant),
    /// A head has arrived, and its answer is being made or written: closing it would throw
    /// away what a client is receiving, so it is never the one to make room.
    Answering,
}

impl Places {
    /// At most `max` connections at once on the port named `port`.
    pub fn new(port: &'static str, max: usize) -> Arc<Places> {
        Arc::new(Places {
            port,
            max,
            registry: Mutex::default(),
            freed: Condvar::new(),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A panic elsewhere while the lock was held leaves the registry whole: every change
    /// under the lock is a single step.
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Which waiting connection makes room: one of the address that holds the most
/// connections, the one of those that has waited longest. Among a few addresses that churn
/// their own connections, they then shed each other, and a lone visitor's connection, which
/// is also the newest, is the last of all to go. None when every connection is answering or
/// already shed.
fn choose_shed<'a>(held: impl Iterator<Item = (u64, &'a Seen)> + Clone) -> Option<u64> {
    let mut per_address: HashMap<IpAddr, usize> = HashMap::new();
    for (_, seen) in held.clone() {
        *per_address.entry(seen.address).or_insert(0) += 1;
    }
    held.filter(|(_, seen)| !seen.shed)
        .filter_map(|(id, seen)| match seen.doing {
            Doing::Waiting(since) => {
                let holds = per_address.get(&seen.address).copied().unwrap_or(0);
                Some((id, (holds, Reverse(since))))
            }
            Doing::Answering => None,
        })
        .max_by_key(|&(_, rank)| rank)
        .map(|(id, _)| id)
}

/// A connection's place, held until its thread ends, however it ends.
pub struct Place {
    places: Arc<Places>,
    id: u64,
}

impl Place {
    /// A place for a connection just accepted: a free one, or one made by shedding a waiting
    /// connection. None when every place is taken by a connection being answered, or when
    /// the shed one has not let go within [`SHED_WAIT`].
    pub fn take(places: &Arc<Places>, socket: &Arc<TcpStream>, peer: IpAddr) -> Option<Place> {
        let max = places.max;
        let mut registry = places.lock();
        let full = registry.held.len() >= max;
        // One shed connection on its way out is room enough for one newcomer.
        if full && !registry.held.values().any(|held| held.seen.shed) {
            let shed = choose_shed(registry.held.iter().map(|(&id, held)| (id, &held.seen)))?;
            if let Some(held) = registry.held.get_mut(&shed) {
                held.seen.shed = true;
                // Its thread, asleep in a read, wakes to the end of the stream and ends.
                let _ = held.socket.shutdown(Shutdown::Both);
            }
            let now = Instant::now();
            if registry
                .last_logged
                .is_none_or(|at| now.saturating_duration_since(at) >= SHED_LOG_EVERY)
            {
                registry.last_logged = Some(now);
                eprintln!(
                    "threadchat: the {} holds {max} connections, its limit; closing the \
                     longest waiting ones to make room (logged once a minute)",
                    places.port
                );
            }
        }
        let (mut registry, _) = places
            .freed
            .wait_timeout_while(registry, SHED_WAIT, |registry| registry.held.len() >= max)
            .unwrap_or_else(PoisonError::into_inner);
        if registry.held.len() >= max {
            return None;
        }
        registry.next_id += 1;
        let id = registry.next_id;
        let seen = Seen {
            address: addresses::address_key(peer),
            doing: Doing::Waiting(Instant::now()),
            shed: false,
        };
        let socket = socket.clone();
        registry.held.insert(id, Held { socket, seen });
        Some(Place {
            places: places.clone(),
            id,
        })
    }

    /// Marks the connection as waiting for its next request head since `since`, kept alive.
    pub fn waiting_since(&self, since: Instant) {
        if let Some(held) = self.places.lock().held.get_mut(&self.id) {
            held.seen.doing = Doing::Waiting(since);
        }
    }

    /// Marks the connection as being answered. False if it was shed meanwhile: its socket
    /// is shut down, and the place is promised to another.
    pub fn answering(&self) -> bool {
        let mut registry = self.places.lock();
        match registry.held.get_mut(&self.id) {
            Some(held) if !held.seen.shed => {
                held.seen.doing = Doing::Answering;
                true
            }
            _ => false,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let places = &self.places;
        // The socket's last handle is dropped under the lock, so the descriptor is closed
        // before anyone is told the place is free.
        places.lock().held.remove(&self.id);
        places.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_waiting_connection_of_the_address_holding_most_is_shed() {
        let start = Instant::now();
        let at = |secs: u64| Doing::Waiting(start + Duration::from_secs(secs));
        let seen = |address: &str, doing: Doing| Seen {
            address: address.parse().unwrap(),
            doing,
            shed: false,
        };
        let held = [
            (1, seen("192.0.2.9", at(0))),
            (2, seen("192.0.2.1", at(3))),
            (3, seen("192.0.2.1", at(2))),
            (4, seen("192.0.2.1", Doing::Answering)),
            (5, seen("192.0.2.2", at(1))),
            (6, seen("192.0.2.2", at(5))),
        ];
        let choose = |held: &[(u64, Seen)]| choose_shed(held.iter().map(|(id, s)| (*id, s)));
        // 192.0.2.1 holds three (one answering): its longest waiting goes, not the lone
        // visitor's older one, nor 192.0.2.2's.
        assert_eq!(choose(&held), Some(3));
        let mut shed = held;
        shed[2].1.shed = true;
        assert_eq!(choose(&shed), Some(2), "a shed one is not shed twice");
        // All from one address: the longest waiting.
        let one = [(7, seen("192.0.2.1", at(4))), (8, seen("192.0.2.1", at(1)))];
        assert_eq!(choose(&one), Some(8));
        let answering = [(9, seen("192.0.2.1", Doing::Answering))];
        assert_eq!(choose(&answering), None, "an answer is never cut short");
    }
}
