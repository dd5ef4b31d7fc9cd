//! The writers: how bytes leave the server.
//!
//! There is one writer thread per core, and each owns a share of the clients. A writer keeps,
//! for each of its clients, a [`Cursor`] into the room's [`Log`](crate::send::log::Log) and the
//! frames meant for that client alone (pongs, close frames, notices), which its reader and
//! the room put in the client's [`Outbox`]. When the log grows, the writer sends each client
//! everything from its cursor to the head, private frames in their place, with one
//! non-blocking `sendmsg`: one system call however many lines are waiting.
//!
//! A client whose socket is full is left alone until epoll says it is writable again, so it
//! never delays anyone else. How a connection ends (evictions, write timeouts, the close and
//! the drain) is in `writer/ending.rs`; the writer's figures for the admin port are moved
//! once per pass by `writer/count.rs`.
//!
//! When to send: a writer with CPU to spare sends each line the moment it arrives; only a
//! busy one rests after each pass, so that lines gather into fewer sends ([`Gather`], in
//! gather.rs, says when and why).

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::event::{ClientId, Departure, Event};
use crate::figures::{self, Histogram, WriterFigures};
use crate::send::delivery::{Delivery, Sent};
use crate::send::gather::Gather;
use crate::send::log::{Cursor, LogReader, Segment};
use crate::send::outbox::{Outbox, Phase, Refused, Wake};
use crate::sys::{self, Poller};
use crate::trace::Trace;
use crate::wire::Frame;

/// A loop that took this long means the process was stopped (Ctrl-Z, `docker pause`, a
/// debugger) or starved: the time is not held against any client.
const PAUSED_AFTER: Duration = Duration::from_secs(1);

/// How often a writer checks its blocked clients against the write timeout, and its closing
/// ones against the grace.
const TIMER_EVERY: Duration = Duration::from_millis(50);

/// What a writer is told through its channel.
enum Job {
    /// A new member, with its cursor at its own join line.
    Add(ClientId, Arc<Outbox>, Cursor),
    /// A client has private frames or is closing.
    Ready(Arc<Outbox>),
}

/// The handle to one writer thread: its channel and how to wake it.
pub struct Writer {
    jobs: Sender<Job>,
    /// The thread is (about to be) asleep in epoll_wait and must be woken through `wake`.
    asleep: AtomicBool,
    poller: Poller,
    /// Its sends, bytes and passes, for the admin port; moved once per pass.
    pub figures: WriterFigures,
}

/// A client as its writer sees it.
struct Client {
    id: ClientId,
    delivery: Delivery,
    /// The last send left bytes behind: wait for epoll to say the socket is writable.
    blocked: bool,
    last_progress: Instant,
    /// When it came to this writer ([`figures::since_start_us`]): a resumed client's replay
    /// of what it missed counts its delay from here, not from its absence.
    added_us: u64,
}

/// The writer thread's own state.
struct Pump {
    writer: Arc<Writer>,
    inbox: Receiver<Job>,
    /// The log of each dialect, by `Dialect as usize`.
    logs: [LogReader; 2],
    events: Sender<Event>,
    /// Clients by slot; the slot is also the epoll token.
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    blocked: usize,
    /// Clients written to the end, with when: each is shut altogether once the client has
    /// acknowledged everything and the grace has passed, unless its reader finished first.
    draining: Vec<(Arc<Outbox>, Instant)>,
    /// Leaves the room has not taken yet (its channel was full): the writer never waits on it.
    leaves: VecDeque<Event>,
    /// Each log's segments as of the current pass.
    snapshots: [Vec<Arc<Segment>>; 2],
    /// Each log's head as of the last pass: when one moves, every client may have something
    /// new.
    heads: [u64; 2],
    /// Clients to serve in the next pass even if the head has not moved.
    due: Vec<usize>,
    /// A client was forgotten: once the pass lets go of its snapshot, the segments only that
    /// client's cursor held can go.
    trim_due: bool,
    gather: Gather,
    /// Sends and bytes of the pass under way, added to the figures when it ends.
    this_pass: (u64, u64),
    /// Delivery delays of the pass under way, added to the figures when it ends.
    delays: Histogram,
    /// Each log's append count as of the pass's heads, for the delays' stamps.
    appends: [u64; 2],
    /// The furthest any client served in the pass under way was behind, in bytes.
    furthest_lag: u64,
    write_timeout: Duration,
    trace: Trace,
}

impl Pump {
    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut writable = Vec::new();
        let mut next_timer = Instant::now();
        let mut last_turn = Instant::now();
        loop {
            // While something is timed, a turn takes a pass, a rest and a wait of at most
            // TIMER_EVERY: far less than PAUSED_AFTER, unless the process was stopped.
            let gap = last_turn.elapsed();
            last_turn = Instant::now();
            if gap > PAUSED_AFTER && self.has_timers() {
                self.paused(gap);
            }
            self.take_jobs();
            // Every line goes to the plain log, so its appends count the lines.
            let appends = self.logs[0].appends();
            let started = Instant::now();
            let figures = &self.writer.figures;
            figures::set(&figures.busy_since_ms, figures::since_start_ms());
            let sent = self.pass();
            let ended = Instant::now();
            self.count_pass(ended - started);
            if self.has_timers() && ended >= next_timer {
                self.check_timers(ended);
                next_timer = ended + TIMER_EVERY;
            }
            if sent {
                let rest = self.gather.rest_after(started, ended, appends);
                figures::set(&self.writer.figures.gathering, u64::from(!rest.is_zero()));
                if !rest.is_zero() {
                    thread::sleep(rest);
                }
            }

            self.writer.asleep.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let idle = self.inbox.is_empty() && self.due.is_empty() && !self.logs_moved();
            let timeout = match (idle, self.has_timers()) {
                (false, _) => Some(Duration::ZERO),
                (true, false) => None,
                (true, true) => Some(TIMER_EVERY),
            };
            // Returns early, with nothing, when interrupted (after SIGSTOP and SIGCONT): the
            // loop simply goes round again.
            self.writer.poller.wait(timeout, &mut events, &mut writable);
            self.writer.asleep.store(false, Ordering::SeqCst);
            for &slot in &writable {
                self.writable(slot as usize);
            }
        }
    }

    /// Whether either log has grown since the last pass.
    fn logs_moved(&self) -> bool {
        self.logs
            .iter()
            .zip(self.heads)
            .any(|(log, seen)| log.head() != seen)
    }

    /// Serves every client with something new; says whether anything was sent.
    fn pass(&mut self) -> bool {
        let everyone = self.logs_moved();
        if !everyone && self.due.is_empty() {
            return false;
        }
        for (i, log) in self.logs.iter().enumerate() {
            self.heads[i] = log.head();
            self.appends[i] = log.appends();
            log.snapshot(&mut self.snapshots[i]);
        }
        let mut due = mem::take(&mut self.due);
        let mut sent = false;
        let now = Instant::now();
        if everyone {
            for slot in 0..self.clients.len() {
                sent |= self.serve(slot, now);
            }
        } else {
            for &slot in &due {
                sent |= self.serve(slot, now);
            }
        }
        // Serving may have made some clients due again (more to send, an eviction).
        due.clear();
        due.append(&mut self.due);
        self.due = due;
        self.snapshots.iter_mut().for_each(Vec::clear);
        if mem::take(&mut self.trim_due) {
            self.logs.iter().for_each(LogReader::trim);
        }
        sent
    }

    /// Sends one client what it has waiting, up to its log's head as of this pass; says
    /// whether anything went.
    fn serve(&mut self, slot: usize, now: Instant) -> bool {
        let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let dialect = client.delivery.outbox.dialect as usize;
        let (head, retention) = (self.heads[dialect], self.logs[dialect].retention());
        let delivery = &mut client.delivery;
        // While its socket is full, a client's private frames wait in its outbox, which holds
        // only so many: taken here, the notices of a sender that never reads would grow
        // without bound, and each refusal would wake the writer.
        if !client.blocked || delivery.outbox.phase() != Phase::Open {
            delivery.collect();
        }
        let behind = delivery.behind(head);
        self.furthest_lag = self.furthest_lag.max(behind);
        if delivery.is_open() && behind > retention {
            self.evict(slot);
            return false;
        }
        if client.blocked {
            return false; // epoll says when it has room
        }
        let from = client.delivery.at();
        match client
            .delivery
            .send(&self.snapshots[dialect], head, self.trace)
        {
            Sent::Lapped => {
                if !self.evict(slot) {
                    // Already closing, and what it still had to get is gone.
                    self.drop_client(slot, "lapped while closing; dropped");
                }
                false
            }
            Sent::Failed => {
                figures::add(&self.writer.figures.lost, 1);
                self.drop_client(slot, "the connection failed; dropped");
                false
            }
            Sent::Bytes { sent, full, more } => {
                self.this_pass.0 += 1;
                self.this_pass.1 += sent as u64;
                let (log, appends) = (&self.logs[dialect], self.appends[dialect]);
                let span = (from, client.delivery.at());
                count::record_delays(&mut self.delays, log, appends, span, client.added_us);
                if sent > 0 {
                    client.last_progress = now;
                }
                if full {
                    client.blocked = true;
                    self.blocked += 1;
                } else if more {
                    self.due.push(slot);
                } else if client.delivery.finished() {
                    self.finish(slot, now);
                }
                sent > 0
            }
        }
    }

    fn writable(&mut self, slot: usize) {
        if let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) {
            if client.blocked {
                client.blocked = false;
                self.blocked -= 1;
            }
            self.due.push(slot);
        }
    }
}

mod count;
pub mod ending;
mod handle;
#[cfg(test)]
mod tests;
