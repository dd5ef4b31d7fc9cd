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

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::log::{Cursor, LogReader, Segment};
use crate::trace::{Direction, FrameTrace, Trace};
use crate::wire::{self, Frame};

/// After a pass over its clients, a writer rests this many times as long as the pass took.
pub const REST_PER_WORK: u32 = 2;

/// The most a writer rests to let lines gather: the latency it may add to a line to save
/// sends. `make bench` chose it: 1000 clients at 200 lines/s each stay under 30 ms p99.
pub const GATHER_BUDGET: Duration = Duration::from_millis(12);

/// Frames waiting for one client alone (pongs, notices). A client that keeps pinging without
/// reading fills it, and its reader then stops with an error.
const MAX_PRIVATE_FRAMES: usize = 64;

/// Linux takes at most 1024 pieces in one `sendmsg`.
const MAX_SLICES_PER_SEND: usize = 1024;

/// How often a writer with blocked clients checks them against the write timeout.
const TIMEOUT_CHECK_EVERY: Duration = Duration::from_millis(50);

/// The epoll token of a writer's wake-up eventfd; any other token is a client's slot.
const WAKE: u64 = u64::MAX;

/// One client's mailbox for frames only it gets, shared by its reader and its writer.
pub struct Outbox {
    socket: Arc<TcpStream>,
    peer: SocketAddr,
    /// Set by the room at the join, so that trace lines can name the client.
    pub nickname: OnceLock<String>,
    private: Mutex<Private>,
    /// The writer that owns this client.
    writer: Arc<Writer>,
    log: LogReader,
    /// Where the writer keeps this client, once it has it.
    slot: AtomicUsize,
}

struct Private {
    /// Each frame with the log offset it goes before.
    frames: VecDeque<(u64, Frame)>,
    closing: bool,
    /// The writer has been told that something is here.
    told: bool,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// [`MAX_PRIVATE_FRAMES`] are already waiting.
    Full,
    /// The connection is closing.
    Closed,
}

impl Outbox {
    pub fn new(
        socket: Arc<TcpStream>,
        peer: SocketAddr,
        writer: Arc<Writer>,
        log: LogReader,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            socket,
            peer,
            nickname: OnceLock::new(),
            private: Mutex::new(Private {
                frames: VecDeque::new(),
                closing: false,
                told: false,
            }),
            writer,
            log,
            slot: AtomicUsize::new(usize::MAX),
        })
    }

    /// Queues a frame for this client alone, after every line the room has sent so far.
    pub fn push(self: &Arc<Self>, frame: Frame) -> Result<(), Refused> {
        let mut private = self.lock();
        if private.closing {
            return Err(Refused::Closed);
        }
        if private.frames.len() >= MAX_PRIVATE_FRAMES {
            return Err(Refused::Full);
        }
        // Read under the lock: a frame queued after the writer took the others is placed at
        // or after everything that writer is sending, so frames never interleave.
        private.frames.push_back((self.log.head(), frame));
        self.tell_writer(private);
        Ok(())
    }

    /// Queues a last frame (a close); once it is sent the socket is shut.
    pub fn push_last(self: &Arc<Self>, frame: Frame) {
        let mut private = self.lock();
        if !private.closing {
            private.frames.push_back((self.log.head(), frame));
            private.closing = true;
            self.tell_writer(private);
        }
    }

    /// The reader is done: send what is queued for this client alone, then shut the socket.
    pub fn finish(self: &Arc<Self>) {
        let mut private = self.lock();
        if !private.closing {
            private.closing = true;
            self.tell_writer(private);
        }
    }

    /// The name trace lines use for this client.
    pub fn label(&self) -> String {
        self.nickname
            .get()
            .cloned()
            .unwrap_or_else(|| self.peer.to_string())
    }

    /// The writer this client belongs to.
    pub fn writer(&self) -> &Arc<Writer> {
        &self.writer
    }

    fn lock(&self) -> MutexGuard<'_, Private> {
        // Every statement leaves the queue consistent, so a panic elsewhere cannot spoil it.
        self.private.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tell_writer(self: &Arc<Self>, mut private: MutexGuard<'_, Private>) {
        if !private.told {
            private.told = true;
            drop(private);
            self.writer.send(Job::Ready(self.clone()));
        }
    }

    /// Moves the private frames into the writer's hands; says whether the client is closing.
    fn take(&self, into: &mut VecDeque<(u64, Frame)>) -> bool {
        let mut private = self.lock();
        private.told = false;
        into.append(&mut private.frames);
        private.closing
    }
}

/// What a writer is told through its channel.
enum Job {
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
    wake: OwnedFd,
}

impl Writer {
    /// Starts writer thread `index`.
    pub fn spawn(
        index: usize,
        log: LogReader,
        write_timeout: Duration,
        trace: Trace,
    ) -> io::Result<Arc<Writer>> {
        let epoll = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: both descriptors were just created and are owned here alone.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let wake = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        epoll_ctl(&epoll, libc::EPOLL_CTL_ADD, wake.as_raw_fd(), WAKE)?;
        let (jobs, inbox) = crossbeam_channel::unbounded();
        let writer = Arc::new(Writer {
            jobs,
            asleep: AtomicBool::new(false),
            wake,
        });
        let pump = Pump {
            writer: writer.clone(),
            inbox,
            epoll,
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
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live local to our own eventfd. A full counter
            // (it never is) would only mean the writer is already due to wake.
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    fn send(&self, job: Job) {
        // Fails only if the writer thread is gone, when the process is ending.
        let _ = self.jobs.send(job);
        fence(Ordering::SeqCst);
        self.wake();
    }
}

/// A client as its writer sees it.
struct Client {
    outbox: Arc<Outbox>,
    cursor: Cursor,
    /// Frames for this client alone, each with the log offset it goes before.
    private: VecDeque<(u64, Frame)>,
    /// How much of the first private frame is already sent.
    private_sent: usize,
    /// Log bytes from here on are never sent: the connection is closing at this boundary.
    limit: u64,
    evicted: bool,
    /// The last send left bytes behind: wait for epoll to say the socket is writable.
    blocked: bool,
    last_progress: Instant,
    /// With `--trace`: decodes what is sent, frame by frame.
    frames_out: Option<FrameTrace>,
}

/// The writer thread's own state.
struct Pump {
    writer: Arc<Writer>,
    inbox: Receiver<Job>,
    epoll: OwnedFd,
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
                let rest = (started.elapsed() * REST_PER_WORK).min(GATHER_BUDGET);
                thread::sleep(rest);
            }

            self.writer.asleep.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let idle =
                self.inbox.is_empty() && self.due.is_empty() && self.log.head() == self.seen_head;
            let timeout_ms = match (idle, self.blocked) {
                (false, _) => 0,
                (true, 0) => -1,
                (true, _) => TIMEOUT_CHECK_EVERY.as_millis() as i32,
            };
            // SAFETY: the buffer is live and its length is passed.
            let ready = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    timeout_ms,
                )
            };
            self.writer.asleep.store(false, Ordering::SeqCst);
            for event in &events[..usize::try_from(ready).unwrap_or(0)] {
                match event.u64 {
                    WAKE => drain_eventfd(&self.writer.wake),
                    slot => self.writable(slot as usize),
                }
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
                    if ours.is_some_and(|c| Arc::ptr_eq(&c.outbox, &outbox)) {
                        self.due.push(slot);
                    }
                }
            }
        }
    }

    fn add(&mut self, outbox: Arc<Outbox>, cursor: Cursor) {
        let slot = self.free.pop().unwrap_or(self.clients.len());
        // Edge-triggered: an event each time a full socket has room again.
        let watched = epoll_ctl(
            &self.epoll,
            libc::EPOLL_CTL_ADD,
            outbox.socket.as_raw_fd(),
            slot as u64,
        );
        if watched.is_err() {
            self.free.push(slot);
            let _ = outbox.socket.shutdown(Shutdown::Both);
            return;
        }
        outbox.slot.store(slot, Ordering::Relaxed);
        let client = Client {
            frames_out: self.trace.frames(Direction::Out),
            outbox,
            cursor,
            private: VecDeque::new(),
            private_sent: 0,
            limit: u64::MAX,
            evicted: false,
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
        let closing = client.outbox.take(&mut client.private);
        if client.limit == u64::MAX && client.cursor.behind(head) > retention {
            self.evict(slot);
            return false;
        }
        let Some(client) = self.clients[slot].as_mut() else {
            return false;
        };
        if client.blocked {
            return false; // epoll says when it has room
        }
        if closing && client.limit == u64::MAX {
            let last = client.private.back().map_or(0, |(at, _)| *at);
            client.limit = last.max(client.cursor.frame_end());
        }
        let outcome = send_waiting(client, &self.snapshot, head, self.trace);
        match outcome {
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
                    return sent > 0;
                }
                if more {
                    self.due.push(slot);
                    return true;
                }
                let finished = client.limit != u64::MAX
                    && client.private.is_empty()
                    && client.cursor.at() >= client.limit;
                if finished {
                    self.drop_client(slot);
                }
                sent > 0
            }
        }
    }

    /// The client is too far behind: finish the frame it is in, send close 1008, and end its
    /// reader now so that the room announces the leave without waiting for the socket.
    fn evict(&mut self, slot: usize) {
        let Some(client) = self.clients[slot].as_mut() else {
            return;
        };
        if client.evicted {
            return;
        }
        self.trace
            .decision(client.outbox.label(), "evicted: too slow");
        client.evicted = true;
        let mid_private = client.private_sent > 0;
        client.private.truncate(usize::from(mid_private));
        client.limit = if mid_private {
            client.cursor.at()
        } else {
            client.cursor.frame_end()
        };
        let close = wire::close_frame(wire::CLOSE_POLICY, "too slow");
        client.private.push_back((client.limit, close));
        let _ = client.outbox.socket.shutdown(Shutdown::Read);
        self.due.push(slot);
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
        for slot in 0..self.clients.len() {
            let timed_out = self.clients[slot].as_ref().is_some_and(|c| {
                c.blocked && now.duration_since(c.last_progress) >= self.write_timeout
            });
            if timed_out {
                if let Some(client) = &self.clients[slot] {
                    self.trace
                        .decision(client.outbox.label(), "write timed out; dropped");
                }
                self.drop_client(slot);
            }
        }
    }

    /// Shuts the socket (which also ends the reader) and forgets the client.
    fn drop_client(&mut self, slot: usize) {
        let Some(client) = self.clients[slot].take() else {
            return;
        };
        if client.blocked {
            self.blocked -= 1;
        }
        let fd = client.outbox.socket.as_raw_fd();
        let _ = epoll_ctl(&self.epoll, libc::EPOLL_CTL_DEL, fd, 0);
        let _ = client.outbox.socket.shutdown(Shutdown::Both);
        self.free.push(slot);
        drop(client);
        // Its cursor may have been the last one in the oldest segments.
        self.log.trim();
    }
}

/// How one send went.
enum Sent {
    /// `full`: the socket took less than it was offered. `more`: there was more than one
    /// `sendmsg` can carry, which is for the next pass.
    Bytes {
        sent: usize,
        full: bool,
        more: bool,
    },
    /// The cursor fell out of the log.
    Lapped,
    Failed,
}

/// Builds the slices from the cursor to `head` (or the client's limit), with private frames
/// in their places, and sends them with one `sendmsg`.
fn send_waiting(client: &mut Client, snapshot: &[Arc<Segment>], head: u64, trace: Trace) -> Sent {
    let to = head.min(client.limit);
    let mut slices: Vec<IoSlice<'_>> = Vec::new();
    // For each slice: true if it is a private frame, and its length.
    let mut kinds: Vec<(bool, usize)> = Vec::new();
    let mut pos = client.cursor.at();
    for (i, (at, frame)) in client.private.iter().enumerate() {
        // Only a frame queued before the join can lie before the cursor, which then still
        // sits on the join line's first byte: a frame boundary.
        let at = (*at).max(pos);
        if at > to {
            break;
        }
        let before = slices.len();
        if client
            .cursor
            .gather(pos, at, snapshot, &mut slices)
            .is_err()
        {
            return Sent::Lapped;
        }
        kinds.extend(slices[before..].iter().map(|s| (false, s.len())));
        pos = at;
        let skip = if i == 0 { client.private_sent } else { 0 };
        slices.push(IoSlice::new(&frame[skip..]));
        kinds.push((true, frame.len() - skip));
    }
    let before = slices.len();
    if client
        .cursor
        .gather(pos, to, snapshot, &mut slices)
        .is_err()
    {
        return Sent::Lapped;
    }
    kinds.extend(slices[before..].iter().map(|s| (false, s.len())));
    if slices.is_empty() {
        return Sent::Bytes {
            sent: 0,
            full: false,
            more: false,
        };
    }
    let total = slices.len();
    let count = total.min(MAX_SLICES_PER_SEND);
    let offered: usize = kinds[..count].iter().map(|k| k.1).sum();
    let sent = match send_slices(&client.outbox.socket, &slices[..count]) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
        Err(_) => return Sent::Failed,
    };
    if let Some(frames) = &mut client.frames_out {
        let who = client.outbox.label();
        let mut left = sent;
        for slice in &slices[..count] {
            let n = left.min(slice.len());
            frames.feed(&slice[..n], &who);
            left -= n;
        }
        trace.decision(&who, &format!("wrote {sent} bytes in 1 system call(s)"));
    }
    drop(slices);

    let mut left = sent;
    for (private, len) in kinds.into_iter().take(count) {
        let n = left.min(len);
        left -= n;
        if private {
            client.private_sent += n;
            if n == len {
                client.private.pop_front();
                client.private_sent = 0;
            }
        } else {
            client.cursor.advance(n as u64, snapshot);
        }
        if n < len {
            break;
        }
    }
    Sent::Bytes {
        sent,
        full: sent < offered,
        more: count < total,
    }
}

/// One `sendmsg` that fails with `WouldBlock` rather than wait, on a socket that stays
/// blocking for the reader thread.
fn send_slices(socket: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid; IoSlice is ABI-compatible with iovec, and the slices
    // outlive the call.
    let sent = unsafe {
        let mut message: libc::msghdr = mem::zeroed();
        message.msg_iov = slices.as_ptr() as *mut libc::iovec;
        message.msg_iovlen = slices.len() as _;
        libc::sendmsg(
            socket.as_raw_fd(),
            &message,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match sent {
        n if n >= 0 => Ok(n as usize),
        _ => Err(io::Error::last_os_error()),
    }
}

fn epoll_ctl(epoll: &OwnedFd, op: i32, fd: RawFd, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: if token == WAKE {
            libc::EPOLLIN as u32
        } else {
            (libc::EPOLLOUT | libc::EPOLLET) as u32
        },
        u64: token,
    };
    // SAFETY: `event` is a live local; the kernel checks the descriptors.
    cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) }).map(|_| ())
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut count: u64 = 0;
    // SAFETY: reads 8 bytes into a live local from our own non-blocking eventfd.
    unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
}

fn cvt(result: i32) -> io::Result<i32> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}
