//! Outboxes and the flusher: how frames leave the server.
//!
//! Every client has an [`Outbox`], a queue of frames waiting to be sent. The room puts
//! broadcasts there and the client's reader puts tungstenite's own replies there (pongs,
//! close frames). One thread, the flusher, does all the writing. It takes everything
//! waiting for a client and sends it with one non-blocking `sendmsg`. That is one system
//! call however many lines are waiting, and the flusher never waits on a socket.
//!
//! Why one flusher rather than a writer thread per client: a loopback send costs about
//! 8 us of CPU whatever its size. A writer per client, woken for every line, pays that
//! (plus a wake-up and two context switches) for every delivery. The flusher instead
//! rests after each round for twice as long as the round took ([`REST_PER_WORK`]). A
//! small room's round takes microseconds, so its lines leave at once. A large room's
//! round takes milliseconds, lines gather while the flusher rests, and each call then
//! carries several of them, so at most a third of a core goes to sending.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::trace::{Direction, FrameTrace, Trace};
use crate::wire::{self, Frame};

/// How many frames may wait for a client whose socket has stopped taking them before
/// it counts as too slow. Frames are shared, so a full queue holds pointers, not copies.
pub const OUTBOX_FRAMES: usize = 1024;

/// How many frames may wait for any client, even one whose socket takes all it is given.
/// A long queue alone may only mean that a burst outran the flusher; it is the socket
/// pushing back that marks a slow client. This bounds memory all the same.
pub const MAX_BACKLOG_FRAMES: usize = 4 * OUTBOX_FRAMES;

/// After a round, the flusher rests this many times as long as the round took.
pub const REST_PER_WORK: u32 = 2;

/// The longest rest, which bounds the delay it adds to a line.
pub const MAX_REST: Duration = Duration::from_millis(25);

/// How soon the flusher tries again a client whose socket took nothing.
pub const RETRY_STALLED: Duration = Duration::from_millis(20);

/// Most frames handed to one `sendmsg`; Linux takes at most 1024 pieces.
const MAX_FRAMES_PER_SEND: usize = 512;

/// One client's queue, and the socket it drains into.
pub struct Outbox {
    socket: Arc<TcpStream>,
    peer: SocketAddr,
    /// Set by the room at the join, so that trace lines can name the client.
    pub nickname: OnceLock<String>,
    queue: Mutex<Queue>,
    flusher: Sender<Arc<Outbox>>,
    trace: Trace,
}

struct Queue {
    frames: VecDeque<Frame>,
    /// How much of the first frame an earlier send already wrote.
    sent_of_first: usize,
    /// The flusher has this outbox in hand: queued for a round or waiting to retry.
    with_flusher: bool,
    state: State,
    /// Since when sends have made no progress: the client is not reading.
    stalled_since: Option<Instant>,
    /// The last send left bytes behind: the client's socket is full.
    backed_up: bool,
    /// With `--trace`: decodes what is sent, frame by frame.
    frames_out: Option<FrameTrace>,
    /// How many frames at the front were already traced in an earlier round.
    traced: usize,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Open,
    /// Send what is queued, then shut the socket (our close frame is last).
    Closing,
    /// The room gave up on the client: close with 1008 and shut the socket.
    Evicted,
    /// The socket is shut; nothing more is sent.
    Done,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// [`OUTBOX_FRAMES`] frames are already waiting.
    Full,
    /// The connection is closing or gone.
    Closed,
}

impl Outbox {
    pub fn new(
        socket: Arc<TcpStream>,
        peer: SocketAddr,
        flusher: Sender<Arc<Outbox>>,
        trace: Trace,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                sent_of_first: 0,
                with_flusher: false,
                state: State::Open,
                stalled_since: None,
                backed_up: false,
                frames_out: trace.frames(Direction::Out),
                traced: 0,
            }),
            socket,
            peer,
            nickname: OnceLock::new(),
            flusher,
            trace,
        })
    }

    /// Queues a frame; never blocks on the client.
    pub fn push(self: &Arc<Self>, frame: Frame) -> Result<(), Refused> {
        let mut queue = self.lock();
        if queue.state != State::Open {
            return Err(Refused::Closed);
        }
        let waiting = queue.frames.len();
        if waiting >= MAX_BACKLOG_FRAMES || (waiting >= OUTBOX_FRAMES && queue.backed_up) {
            return Err(Refused::Full);
        }
        queue.frames.push_back(frame);
        self.hand_to_flusher(queue);
        Ok(())
    }

    /// Queues a final frame (a close); once it is sent the socket is shut.
    pub fn push_last(self: &Arc<Self>, frame: Frame) {
        let mut queue = self.lock();
        if queue.state == State::Open {
            queue.frames.push_back(frame);
            queue.state = State::Closing;
            self.hand_to_flusher(queue);
        }
    }

    /// The room gives up on this client: what is queued is dropped, and the client gets
    /// close 1008 "too slow" once it reads again, or is cut off at the write timeout.
    pub fn evict(self: &Arc<Self>) {
        let mut queue = self.lock();
        if matches!(queue.state, State::Open | State::Closing) {
            queue.state = State::Evicted;
            self.hand_to_flusher(queue);
        }
    }

    /// The name trace lines use for this client.
    pub fn label(&self) -> String {
        self.nickname
            .get()
            .cloned()
            .unwrap_or_else(|| self.peer.to_string())
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a queue that is still consistent.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn hand_to_flusher(self: &Arc<Self>, mut queue: MutexGuard<'_, Queue>) {
        if !queue.with_flusher {
            queue.with_flusher = true;
            drop(queue);
            // Fails only once the flusher has stopped, when the process is ending.
            let _ = self.flusher.send(self.clone());
        }
    }

    /// Sends what is waiting, as far as the socket takes it without blocking.
    /// Returns true if something is still waiting and the flusher should come back.
    fn flush(&self, now: Instant, write_timeout: Duration) -> bool {
        let (mut frames, mut offset, state) = {
            let mut queue = self.lock();
            if queue.state == State::Evicted {
                evicted_queue(&mut queue);
            }
            let frames = mem::take(&mut queue.frames);
            let skip = mem::take(&mut queue.traced);
            if let Some(trace) = &mut queue.frames_out {
                let who = self.label();
                frames.iter().skip(skip).for_each(|f| trace.feed(f, &who));
            }
            (frames, queue.sent_of_first, queue.state)
        };
        if state == State::Done {
            return false;
        }

        let (sent, calls, result) = send_nonblocking(&self.socket, &mut frames, &mut offset);
        if self.trace.is_on() && calls > 0 {
            self.trace.decision(
                self.label(),
                &format!("wrote {sent} bytes in {calls} system call(s)"),
            );
        }

        let mut queue = self.lock();
        // Unsent frames go back in front of any that arrived meanwhile. A batch that all
        // went is dropped rather than kept as the queue: after a burst it may have grown
        // to hundreds of slots, which an idle client would then hold for ever.
        queue.traced = frames.len();
        queue.backed_up = !frames.is_empty();
        if !frames.is_empty() {
            frames.append(&mut queue.frames);
            queue.frames = frames;
        }
        queue.sent_of_first = offset;
        let finished_last = queue.frames.is_empty() && queue.state != State::Open;
        let stalled_too_long = match (result, queue.stalled_since) {
            (SendResult::Progress, _) => {
                queue.stalled_since = None;
                false
            }
            (SendResult::WouldBlock, None) => {
                queue.stalled_since = Some(now);
                false
            }
            (SendResult::WouldBlock, Some(since)) => now.duration_since(since) >= write_timeout,
            (SendResult::Failed, _) => true,
        };
        let shut = finished_last || stalled_too_long;
        if shut {
            queue.state = State::Done;
            queue.frames.clear();
        }
        let again = queue.state != State::Done && !queue.frames.is_empty();
        queue.with_flusher = again;
        drop(queue);
        if shut {
            if stalled_too_long {
                self.trace
                    .decision(self.label(), "write timed out; dropped");
            }
            // Wakes the reader, whose read then ends: it reports the leave.
            let _ = self.socket.shutdown(Shutdown::Both);
        }
        again
    }
}

/// After an eviction only a partly sent frame is worth finishing; then the close.
fn evicted_queue(queue: &mut Queue) {
    let keep = usize::from(queue.sent_of_first > 0);
    queue.frames.truncate(keep);
    queue.traced = queue.traced.min(keep);
    queue
        .frames
        .push_back(wire::close_frame(wire::CLOSE_POLICY, "too slow"));
    queue.state = State::Closing;
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum SendResult {
    /// Everything went, or at least something did.
    Progress,
    /// The client's buffers are full: nothing could be sent now.
    WouldBlock,
    /// The connection is broken.
    Failed,
}

/// Sends `frames` (the first from `offset` on) with as few `sendmsg` calls as the socket
/// allows, never blocking. Sent frames are removed. Returns bytes sent, calls made, and
/// how it went.
fn send_nonblocking(
    socket: &TcpStream,
    frames: &mut VecDeque<Frame>,
    offset: &mut usize,
) -> (usize, usize, SendResult) {
    let (mut sent, mut calls) = (0, 0);
    let mut result = SendResult::Progress;
    let mut pieces: Vec<libc::iovec> = Vec::new();
    while !frames.is_empty() {
        pieces.clear();
        for (i, frame) in frames.iter().take(MAX_FRAMES_PER_SEND).enumerate() {
            let skip = if i == 0 { *offset } else { 0 };
            pieces.push(libc::iovec {
                iov_base: frame[skip..].as_ptr() as *mut libc::c_void,
                iov_len: frame.len() - skip,
            });
        }
        calls += 1;
        match send_pieces(socket, &pieces) {
            Ok(mut n) => {
                sent += n;
                while n > 0 {
                    let left_in_first = frames[0].len() - *offset;
                    if n >= left_in_first {
                        n -= left_in_first;
                        frames.pop_front();
                        *offset = 0;
                    } else {
                        *offset += n;
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if sent == 0 {
                    result = SendResult::WouldBlock;
                }
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                result = SendResult::Failed;
                break;
            }
        }
    }
    (sent, calls, result)
}

/// One `sendmsg` that fails with `WouldBlock` rather than wait, on a socket that stays
/// blocking for the reader thread.
fn send_pieces(socket: &TcpStream, pieces: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid; it points at `pieces`, which outlives the call,
    // and each iovec points into a frame that the caller keeps alive.
    let sent = unsafe {
        let mut message: libc::msghdr = mem::zeroed();
        message.msg_iov = pieces.as_ptr() as *mut libc::iovec;
        message.msg_iovlen = pieces.len() as _;
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

/// The flusher thread: waits for outboxes with something to send and sends it, in
/// rounds. Between rounds it rests ([`REST_PER_WORK`]); clients that are not reading
/// come back every [`RETRY_STALLED`] until they drain or reach the write timeout.
pub fn run_flusher(ready: Receiver<Arc<Outbox>>, write_timeout: Duration) {
    let mut round: Vec<Arc<Outbox>> = Vec::new();
    let mut again: Vec<Arc<Outbox>> = Vec::new();
    let mut rest_until = Instant::now();
    loop {
        if again.is_empty() {
            // Nothing waiting: sleep until the room or a reader queues something.
            match ready.recv() {
                Ok(outbox) => round.push(outbox),
                Err(_) => return,
            }
        }
        let now = Instant::now();
        if now < rest_until {
            thread::sleep(rest_until - now);
        }
        let started = Instant::now();
        round.append(&mut again);
        round.extend(ready.try_iter());
        for outbox in round.drain(..) {
            if outbox.flush(started, write_timeout) {
                again.push(outbox);
            }
        }
        let mut rest = (started.elapsed() * REST_PER_WORK).min(MAX_REST);
        if !again.is_empty() {
            rest = rest.max(RETRY_STALLED);
        }
        rest_until = Instant::now() + rest;
    }
}
