//! The outbox: frames for one client alone, and where its connection is in its life.
//!
//! The room's lines reach a client through the log. What only this client gets (pongs and
//! close replies from tungstenite, the "slow down" notice, close frames) waits here, each
//! frame marked with the log offset it goes before, until the client's writer takes it and
//! sends it in its place, so it never lands in the middle of a line.
//!
//! The outbox also holds the connection's [`Phase`], the one record of its life that its
//! reader, the room and its writer all see. Only the methods here and in `outbox/ending.rs`
//! move it, forward only, under one lock; whoever moves it out of [`Phase::Open`] learns so,
//! and is the one who tells the room that the client has left. So a leave is announced once,
//! whichever thread notices the end first.
//!
//! The outbox is a plain queue: it does not know the writer. A push says whether the
//! writer must be woken, and the caller wakes it ([`crate::send::writer::Writer::ready`]).

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::send::log::LogReader;
use crate::wire::{self, Dialect, Frame};

/// Frames waiting for one client alone (pongs, notices). A client that keeps pinging without
/// reading fills it, and its reader then stops with an error. The reply to a client's close
/// always fits: the client is owed it (RFC 6455 5.5.1), and there is only ever one.
const MAX_PRIVATE_FRAMES: usize = 64;

/// Where a connection is in its life. It only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The room's lines and private frames go out; the reader hands messages to the room.
    Open,
    /// The frames queued so far are the last (a close frame among them, unless the client
    /// is simply gone). The client gets the log up to where the last of them was queued (the
    /// end of the frame it is in, if that is further), and nothing after.
    Closing,
    /// Its writer gave up on a client too far behind: it gets the rest of the frame it is
    /// in, then close 1008. Private frames it had not started are dropped.
    Evicted,
    /// Everything is sent, or the socket failed: its write side is shut.
    Done,
}

/// Whether the writer must be woken to look at this outbox.
#[must_use]
#[derive(Debug, PartialEq)]
pub enum Wake {
    Writer,
    /// It has been told already and has not looked yet.
    No,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// [`MAX_PRIVATE_FRAMES`] are already waiting.
    Full,
    /// The connection is no longer open: nothing more is sent to it.
    Closed,
}

/// One client's mailbox for frames only it gets, shared by its reader, the room and its
/// writer, with the connection's phase.
pub struct Outbox {
    pub socket: Arc<TcpStream>,
    /// The client's address, which names it in trace lines until it has a nickname.
    from: String,
    /// Set by the room at the join, so that trace lines can name the client.
    pub nickname: OnceLock<String>,
    /// Which of the server's writers sends to this client, for its whole life.
    pub writer: usize,
    /// How its lines look, and so which log it reads.
    pub dialect: Dialect,
    /// That log, whose head places each private frame among the lines.
    log: LogReader,
    state: Mutex<State>,
    /// Where the writer keeps this client, once it has it.
    pub(crate) slot: AtomicUsize,
    /// How far into its log the client's bytes have been handed to the kernel: a session
    /// that comes back is owed the lines after this (less what may have been on its way),
    /// not the ones it already had.
    handed: AtomicU64,
}

struct State {
    /// Each frame with the log offset it goes before.
    frames: VecDeque<(u64, Frame)>,
    phase: Phase,
    /// The reader thread has ended: nobody reads from the socket any more.
    reader_done: bool,
    /// The writer has been told that something is here and has not looked yet.
    told: bool,
}

impl Outbox {
    pub fn new(
        socket: Arc<TcpStream>,
        from: String,
        writer: usize,
        dialect: Dialect,
        log: LogReader,
    ) -> Outbox {
        Outbox {
            socket,
            from,
            nickname: OnceLock::new(),
            writer,
            dialect,
            log,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                phase: Phase::Open,
                reader_done: false,
                told: false,
            }),
            slot: AtomicUsize::new(usize::MAX),
            handed: AtomicU64::new(0),
        }
    }

    /// Queues a frame for this client alone, after every line the room has sent so far.
    pub fn push(&self, frame: Frame) -> Result<Wake, Refused> {
        self.push_before(frame, None)
    }

    /// Queues a frame for this client alone before the line at log offset `at`, or, with
    /// `None`, after every line sent so far.
    pub fn push_before(&self, frame: Frame, at: Option<u64>) -> Result<Wake, Refused> {
        let mut state = self.lock();
        if state.phase != Phase::Open {
            return Err(Refused::Closed);
        }
        if state.frames.len() >= MAX_PRIVATE_FRAMES && !wire::is_close(&frame) {
            return Err(Refused::Full);
        }
        // Read under the lock: a frame queued after the writer took the others is placed at
        // or after everything that writer is sending, so frames never interleave.
        let at = at.unwrap_or_else(|| self.log.head());
        state.frames.push_back((at, frame));
        Ok(state.tell())
    }

    /// Ends the open phase: `last` (a close frame) is the final frame queued, and nothing
    /// after it will be. Returns whether this call ended it, and so must announce the leave.
    pub fn close(&self, last: Option<Frame>) -> (bool, Wake) {
        let mut state = self.lock();
        if state.phase != Phase::Open {
            return (false, Wake::No);
        }
        state.phase = Phase::Closing;
        if let Some(frame) = last {
            state.frames.push_back((self.log.head(), frame));
        }
        (true, state.tell())
    }

    /// Moves the private frames into the writer's hands, and says where the connection is.
    pub(crate) fn take(&self, into: &mut VecDeque<(u64, Frame)>) -> Phase {
        let mut state = self.lock();
        state.told = false;
        into.append(&mut state.frames);
        state.phase
    }

    /// Its writer has handed the client's log up to offset `at` to the kernel. Only that
    /// writer stores it, once per send; the room reads it when the connection drops.
    pub(crate) fn handed_up_to(&self, at: u64) {
        self.handed.store(at, Ordering::Relaxed);
    }

    /// Where in its log the client's bytes stopped being handed to the kernel.
    pub fn handed(&self) -> u64 {
        self.handed.load(Ordering::Relaxed)
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// The name trace lines use for this client.
    pub fn label(&self) -> String {
        self.nickname
            .get()
            .cloned()
            .unwrap_or_else(|| self.from.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every statement leaves the state consistent, so a panic elsewhere cannot spoil it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Whether the writer must be told; after this it counts as told until it looks.
    fn tell(&mut self) -> Wake {
        if std::mem::replace(&mut self.told, true) {
            Wake::No
        } else {
            Wake::Writer
        }
    }
}

mod ending;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::log::Log;
    use std::net::TcpListener;

    fn outbox() -> (Outbox, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let log = Log::new(1 << 20);
        (
            Outbox::new(
                Arc::new(socket),
                "here".into(),
                0,
                Dialect::Plain,
                log.reader(),
            ),
            log,
        )
    }

    #[test]
    fn only_the_first_push_since_the_writer_looked_wakes_it() {
        let (outbox, _log) = outbox();
        assert_eq!(outbox.push(wire::ping_frame()), Ok(Wake::Writer));
        assert_eq!(outbox.push(wire::ping_frame()), Ok(Wake::No));
        let mut taken = VecDeque::new();
        assert_eq!(outbox.take(&mut taken), Phase::Open);
        assert_eq!(taken.len(), 2);
        assert_eq!(outbox.push(wire::ping_frame()), Ok(Wake::Writer));
    }

    #[test]
    fn a_full_outbox_refuses() {
        let (outbox, _log) = outbox();
        for _ in 0..MAX_PRIVATE_FRAMES {
            assert!(outbox.push(wire::ping_frame()).is_ok());
        }
        assert_eq!(outbox.push(wire::ping_frame()), Err(Refused::Full));
        // The reply to the client's close is owed to it all the same.
        assert!(outbox.push(wire::close_frame(1000, "")).is_ok());
    }

    #[test]
    fn the_open_phase_ends_once_and_nothing_is_queued_after() {
        let (outbox, _log) = outbox();
        assert!(outbox.close(Some(wire::close_frame(1000, ""))).0);
        assert!(!outbox.close(None).0, "ended once");
        assert!(!outbox.evict());
        assert!(!outbox.done());
        assert_eq!(outbox.push(wire::ping_frame()), Err(Refused::Closed));
    }

    #[test]
    fn an_evicted_outbox_drops_what_waits_and_refuses_more() {
        let (outbox, _log) = outbox();
        let _ = outbox.push(wire::text_frame("slow down"));
        assert!(outbox.evict());
        assert_eq!(outbox.push(wire::ping_frame()), Err(Refused::Closed));
        assert!(!outbox.close(None).0, "the eviction already ended it");
        let mut taken = VecDeque::new();
        assert_eq!(outbox.take(&mut taken), Phase::Evicted);
        assert!(taken.is_empty());
    }
}
