//! The outbox: frames for one client alone, and the way to its writer.
//!
//! The room's lines reach a client through the log. What only this client gets (pongs and
//! close replies from tungstenite, the "slow down" notice, our close frames) waits here, each
//! frame marked with the log offset it goes before. The client's writer takes them and
//! sends them in their places, so they never land in the middle of a line.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::log::LogReader;
use crate::wire::Frame;
use crate::writer::{Job, Writer};

/// Frames waiting for one client alone (pongs, notices). A client that keeps pinging without
/// reading fills it, and its reader then stops with an error.
const MAX_PRIVATE_FRAMES: usize = 64;

/// One client's mailbox for frames only it gets, shared by its reader and its writer.
pub struct Outbox {
    pub(crate) socket: Arc<TcpStream>,
    /// The client's address, which names it in trace lines until it has a nickname.
    from: String,
    /// Set by the room at the join, so that trace lines can name the client.
    pub nickname: OnceLock<String>,
    private: Mutex<Private>,
    /// The writer that owns this client.
    writer: Arc<Writer>,
    log: LogReader,
    /// Where the writer keeps this client, once it has it.
    pub(crate) slot: AtomicUsize,
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
        from: String,
        writer: Arc<Writer>,
        log: LogReader,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            socket,
            from,
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
            .unwrap_or_else(|| self.from.clone())
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
    pub(crate) fn take(&self, into: &mut VecDeque<(u64, Frame)>) -> bool {
        let mut private = self.lock();
        private.told = false;
        into.append(&mut private.frames);
        private.closing
    }
}
