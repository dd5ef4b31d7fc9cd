//! The writers: how bytes leave the server.
//!
//! There is one writer thread per core, and each owns a share of the clients. A writer keeps,
//! for each of its clients, a [`Cursor`] into the room's [`Log`](crate::log::Log) and the
//! frames meant for that client alone (pongs, close frames, notices), which its reader puts
//! in the client's [`Outbox`]. When the log grows, the writer sends each client everything
//! from its cursor to the head, private frames in their place, with one non-blocking
//! `sendmsg`: one system call however many lines are waiting.
//!
//! A client whose socket is full is left alone until epoll says it is writable again, so it
//! never delays anyone else. One that falls more than the log's retention behind is evicted
//! (close 1008 "too slow"); one whose socket takes nothing for `--write-timeout` is dropped.
//!
//! Why gather: a loopback `send` costs about 8 us of CPU whatever its size, so sending each
//! line the moment it arrives would cost 8 us per delivery. After a pass over its clients a
//! writer rests [`REST_PER_WORK`] times as long as the pass took, at most [`GATHER_BUDGET`],
//! and lines gather meanwhile. A writer with few clients has passes of microseconds, so it
//! hardly rests and small rooms never wait; a busy one batches many lines into each send.

use std::io;
use std::mem;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::delivery::{Delivery, Sent};
use crate::log::{Cursor, LogReader, Segment};
use crate::outbox::Outbox;
use crate::sys::Poller;
use crate::trace::Trace;

/// After a pass over its clients, a writer rests this many times as long as the pass took:
/// a pass over a few clients takes microseconds, so small rooms hardly wait. `make bench`,
/// readers up to 4 ms late: 100 clients at 200 lines/s each have p99 5-6 ms at 9 (9 ms at 12).
pub const REST_PER_WORK: u32 = 9;

/// The most a writer rests to let lines gather: the latency it may add to a line to save
/// sends. A loopback send costs about 8 us whatever it carries, so with 1000 clients at 200
/// lines/s each this sets the CPU per delivery: `make bench` measured 1.46-1.53 us at 18 ms
/// with p99 28-30 ms, and p99 over 30 ms at 19 ms.
pub const GATHER_BUDGET: Duration = Duration::from_millis(18);

/// How often a writer with blocked clients checks them against the write timeout.
const TIMEOUT_CHECK_EVERY: Duration = Duration::from_millis(50);

/// What a writer is told through its channel.
pub(crate) enum Job {
    /// A new client, with its cursor at its own join line.
    Add(Arc<Outbox>, Cursor),
    /// A client has private frames or is closing.
    Ready(Arc<Outbox>),
}

/// The handle to one writer thread: its channel and how to wake it.
pub struct Writer {
    jobs: Sender<Job>,
    /// The thread is (about to be) asleep in epoll_wait and must be woken through `wake`.
    asleep: AtomicBool,
    poller: Poller,
}

impl Writer {
    /// Starts writer thread `index`.
    pub fn spawn(
        index: usize,
        log: LogReader,
        write_timeout: Duration,
        trace: Trace,
    ) -> io::Result<Arc<Writer>> {
        let (jobs, inbox) = crossbeam_channel::unbounded();
        let writer = Arc::new(Writer {
            jobs,
            asleep: AtomicBool::new(false),
            poller: Poller::new()?,
        });
        let pump = Pump {
            writer: writer.clone(),
            inbox,
            log,
            clients: Vec::new(),
            free: Vec::new(),
            blocked: 0,
            snapshot: Vec::new(),
            seen_head: 0,
            due: Vec::new(),
            write_timeout,
            trace,
        };
        thread::Builder::new()
            .name(format!("writer-{index}"))
            .spawn(move || pump.run())?;
        Ok(writer)
    }

    /// Hands a newly joined client to this writer.
    pub fn add(&self, outbox: Arc<Outbox>, cursor: Cursor) {
        self.send(Job::Add(outbox, cursor));
    }

    /// The log grew: make sure the writer is not sleeping through it.
    pub fn wake(&self) {
        if self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst) {
            self.poller.wake();
        }
    }

    pub(crate) fn send(&self, job: Job) {
        // Fails only if the writer thread is gone, when the process is ending.
        let _ = self.jobs.send(job);
        fence(Ordering::SeqCst);
        self.wake();
    }
}

/// A client as its writer sees it.
struct Client {
    delivery: Delivery,
    /// The last send left bytes behind: wait for epoll to say the socket is writable.
    blocked: bool,
    last_progress: Instant,
}

/// The writer thread's own state.
struct Pump {
    writer: Arc<Writer>,
    inbox: Receiver<Job>,
    log: LogReader,
    /// Clients by slot; the slot is also the epoll token.
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    blocked: usize,
    /// The log's segments as of the current pass.
    snapshot: Vec<Arc<Segment>>,
    /// The head as of the last pass: when it moves, every client may have something new.
    seen_head: u64,
    /// Clients to serve in the next pass even if the head has not moved.
    due: Vec<usize>,
    write_timeout: Duration,
    trace: Trace,
}

impl Pump {
    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut writable = Vec::new();
        let mut next_timeout_check = Instant::now();
        loop {
            self.take_jobs();
            let started = Instant::now();
            let sent = self.pass();
            if self.blocked > 0 && started >= next_timeout_check {
                self.drop_timed_out(started);
                next_timeout_check = started + TIMEOUT_CHECK_EVERY;
            }
            if sent {
                // Let lines gather, in proportion to what sending them just cost.
                thread::sleep((started.elapsed() * REST_PER_WORK).min(GATHER_BUDGET));
            }

            self.writer.asleep.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let idle =
                self.inbox.is_empty() && self.due.is_empty() && self.log.head() == self.seen_head;
            let timeout = match (idle, self.blocked) {
                (false, _) => Some(Duration::ZERO),
                (true, 0) => None,
                (true, _) => Some(TIMEOUT_CHECK_EVERY),
            };
            self.writer.poller.wait(timeout, &mut events, &mut writable);
            self.writer.asleep.store(false, Ordering::SeqCst);
            for &slot in &writable {
                self.writable(slot as usize);
            }
        }
    }

    fn take_jobs(&mut self) {
        while let Ok(job) = self.inbox.try_recv() {
            match job {
                Job::Add(outbox, cursor) => self.add(outbox, cursor),
                Job::Ready(outbox) => {
                    let slot = outbox.slot.load(Ordering::Relaxed);
                    let ours = self.clients.get(slot).and_then(Option::as_ref);
                    // Not added yet: the Add serves it. Gone: nothing to do.
                    if ours.is_some_and(|c| Arc::ptr_eq(&c.delivery.outbox, &outbox)) {
                        self.due.push(slot);
                    }
                }
            }
        }
    }

    fn add(&mut self, outbox: Arc<Outbox>, cursor: Cursor) {
        let slot = self.free.pop().unwrap_or(self.clients.len());
        // Edge-triggered: an event each time a full socket has room again.
        let watched = self
            .writer
            .poller
            .watch_writable(outbox.socket.as_raw_fd(), slot as u64);
        if watched.is_err() {
            self.free.push(slot);
            let _ = outbox.socket.shutdown(Shutdown::Both);
            return;
        }
        outbox.slot.store(slot, Ordering::Relaxed);
        let client = Client {
            delivery: Delivery::new(outbox, cursor, self.trace),
            blocked: false,
            last_progress: Instant::now(),
        };
        if slot == self.clients.len() {
            self.clients.push(Some(client));
        } else {
            self.clients[slot] = Some(client);
        }
        self.due.push(slot);
    }

    /// Serves every client with something new; says whether anything was sent.
    fn pass(&mut self) -> bool {
        let head = self.log.head();
        let everyone = head != self.seen_head;
        if !everyone && self.due.is_empty() {
            return false;
        }
        self.seen_head = head;
        self.log.snapshot(&mut self.snapshot);
        let mut due = mem::take(&mut self.due);
        let mut sent = false;
        let now = Instant::now();
        if everyone {
            for slot in 0..self.clients.len() {
                sent |= self.serve(slot, head, now);
            }
        } else {
            for &slot in &due {
                sent |= self.serve(slot, head, now);
            }
        }
        // Serving may have made some clients due again (more to send, an eviction).
        due.clear();
        due.append(&mut self.due);
        self.due = due;
        self.snapshot.clear();
        sent
    }

    /// Sends one client what it has waiting, up to `head`; says whether anything went.
    fn serve(&mut self, slot: usize, head: u64, now: Instant) -> bool {
        let retention = self.log.retention();
        let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let delivery = &mut client.delivery;
        delivery.collect();
        if delivery.is_open() && delivery.behind(head) > retention {
            self.evict(slot);
            return false;
        }
        if client.blocked {
            return false; // epoll says when it has room
        }
        match client.delivery.send(&self.snapshot, head, self.trace) {
            Sent::Lapped => {
                self.evict(slot);
                false
            }
            Sent::Failed => {
                self.drop_client(slot);
                false
            }
            Sent::Bytes { sent, full, more } => {
                if sent > 0 {
                    client.last_progress = now;
                }
                if full {
                    client.blocked = true;
                    self.blocked += 1;
                } else if more {
                    self.due.push(slot);
                } else if client.delivery.finished() {
                    self.drop_client(slot);
                }
                sent > 0
            }
        }
    }

    /// The client is too far behind: it gets close 1008 after the frame it is in, and its
    /// reader ends now, so that the room announces the leave without waiting for the socket.
    fn evict(&mut self, slot: usize) {
        let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let delivery = &mut client.delivery;
        if delivery.evict() {
            self.trace
                .decision(delivery.outbox.label(), "evicted: too slow");
            let _ = delivery.outbox.socket.shutdown(Shutdown::Read);
            self.due.push(slot);
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

    fn drop_timed_out(&mut self, now: Instant) {
        let timed_out: Vec<usize> = (0..self.clients.len())
            .filter(|&slot| {
                self.clients[slot].as_ref().is_some_and(|c| {
                    c.blocked && now.duration_since(c.last_progress) >= self.write_timeout
                })
            })
            .collect();
        for slot in timed_out {
            if let Some(Some(client)) = self.clients.get(slot) {
                let who = client.delivery.outbox.label();
                self.trace.decision(who, "write timed out; dropped");
            }
            self.drop_client(slot);
        }
    }

    /// Shuts the socket (which also ends the reader) and forgets the client.
    fn drop_client(&mut self, slot: usize) {
        let Some(client) = self.clients.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if client.blocked {
            self.blocked -= 1;
        }
        let socket = &client.delivery.outbox.socket;
        self.writer.poller.forget(socket.as_raw_fd());
        let _ = socket.shutdown(Shutdown::Both);
        self.free.push(slot);
        if self.free.len() == self.clients.len() {
            // Everyone has gone: give back the slots a storm may have grown.
            self.clients = Vec::new();
            self.free = Vec::new();
        }
        drop(client);
        // Its cursor may have been the last one in the oldest segments.
        self.log.trim();
    }
}
