//! How a writer ends its clients' connections, off the path a line takes: the slow client's
//! eviction, the write timeout, the close and the drain after it, and the leaves it owes the
//! room. The writer's loop ([`Pump`] in `writer.rs`) calls these by name.
//!
//! A client that falls more than the log's retention behind is evicted (close 1008 "too
//! slow"); one whose socket takes nothing for `--write-timeout` is closed (1008 "not
//! reading"), its socket given room for the close frame. Either way the writer tells the room
//! that it left, since the client's reader may be asleep.
//!
//! Ending a connection the way RFC 6455 (7.1.1) asks: after the last frame (a close frame)
//! the writer shuts the socket's write side, so the client reads the close and its reason,
//! then an orderly end of stream. The reader meanwhile drains what the client still sends,
//! so the socket is not closed with input unread, which would reset it. Once the client has
//! acknowledged every byte and [`CLOSE_GRACE`] has passed (or the write timeout, if it never
//! does), the writer shuts the socket altogether, which ends the reader's drain.

use super::*;

/// How long a client that has everything we sent, our close frame included, may take to
/// answer it and end its side before its socket is shut altogether. A browser answers
/// within a round trip.
pub const CLOSE_GRACE: Duration = Duration::from_millis(500);

impl Pump {
    pub(super) fn has_timers(&self) -> bool {
        self.blocked > 0 || !self.draining.is_empty() || !self.leaves.is_empty()
    }

    /// The process was stopped for `gap`: nobody's write timeout or grace ran meanwhile.
    pub(super) fn paused(&mut self, gap: Duration) {
        let now = Instant::now();
        for client in self.clients.iter_mut().flatten() {
            client.last_progress = after_pause(client.last_progress, gap, now);
        }
        for (_, since) in &mut self.draining {
            *since = after_pause(*since, gap, now);
        }
    }

    /// Closes blocked clients whose socket has taken nothing for the write timeout, and shuts
    /// the sockets of closed clients whose reader is still there after the grace.
    pub(super) fn check_timers(&mut self, now: Instant) {
        let timed_out: Vec<usize> = (0..self.clients.len())
            .filter(|&slot| {
                self.clients[slot].as_ref().is_some_and(|c| {
                    c.blocked && now.duration_since(c.last_progress) >= self.write_timeout
                })
            })
            .collect();
        for slot in timed_out {
            self.time_out(slot, now);
        }
        let write_timeout = self.write_timeout;
        self.draining.retain(|(outbox, since)| {
            if outbox.is_reader_done() {
                return false;
            }
            let waited = now.saturating_duration_since(*since);
            let delivered = sys::unsent_bytes(&outbox.socket) == 0;
            if (waited < CLOSE_GRACE || !delivered) && waited < write_timeout {
                return true;
            }
            // Wakes the reader, which ends its drain.
            let _ = outbox.socket.shutdown(Shutdown::Both);
            false
        });
        self.hand_over_leaves();
        if mem::take(&mut self.trim_due) {
            self.logs.iter().for_each(LogReader::trim);
        }
    }

    /// The client's socket has taken nothing for the write timeout. It gets the rest of the
    /// frame it is in and a close frame, for which its socket is given room, then an orderly
    /// end, so that it reads them if it ever reads again; its reader drains what it still
    /// sends. The room hears that it was lost, so a resumable session waits for it. Only if
    /// the system refuses the room is the socket simply shut, without a close frame.
    fn time_out(&mut self, slot: usize, now: Instant) {
        let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let id = client.id;
        let delivery = &mut client.delivery;
        let was_open = delivery.time_out();
        if was_open {
            figures::add(&self.writer.figures.write_timeouts, 1);
        }
        let dialect = delivery.outbox.dialect as usize;
        let head = self.logs[dialect].head();
        let left = delivery.left(head);
        let grown = sys::grow_send_buffer(&delivery.outbox.socket, left).is_ok();
        let mut snapshot = Vec::new();
        self.logs[dialect].snapshot(&mut snapshot);
        let sent = grown
            && matches!(
                delivery.send(&snapshot, head, self.trace),
                Sent::Bytes { .. }
            );
        let finished = sent && delivery.finished();
        drop(snapshot);
        self.trace
            .decision(delivery.outbox.label(), "write timed out");
        self.tell_room_if_ended(id, was_open, true);
        if finished {
            self.finish(slot, now);
        } else {
            self.drop_client(slot, "no room for the close frame; dropped");
        }
    }

    /// The client is too far behind: it gets close 1008 after the frame it is in, and the
    /// room hears now that it left. Returns false if it was already closing.
    pub(super) fn evict(&mut self, slot: usize) -> bool {
        let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        if !client.delivery.evict() {
            return false;
        }
        let id = client.id;
        figures::add(&self.writer.figures.too_slow, 1);
        self.trace
            .decision(client.delivery.outbox.label(), "evicted: too slow");
        self.tell_room_if_ended(id, true, false);
        self.due.push(slot);
        true
    }

    /// Everything up to the close is sent: shut the write side, so the client reads an
    /// orderly end after our close frame, and leave the reader to drain.
    pub(super) fn finish(&mut self, slot: usize, now: Instant) {
        if let Some(client) = self.forget(slot) {
            let outbox = client.delivery.outbox;
            self.trace
                .decision(outbox.label(), "all sent; write side shut");
            let _ = outbox.socket.shutdown(Shutdown::Write);
            self.tell_room_if_ended(client.id, outbox.done(), false);
            self.draining.push((outbox, now));
        }
    }

    /// Gives up on the socket, broken or taking nothing: shut it (which also wakes the
    /// reader) and forget the client. A resumable client may come back.
    pub(super) fn drop_client(&mut self, slot: usize, why: &str) {
        if let Some(client) = self.forget(slot) {
            let outbox = &client.delivery.outbox;
            self.trace.decision(outbox.label(), why);
            let _ = outbox.socket.shutdown(Shutdown::Both);
            self.tell_room_if_ended(client.id, outbox.done(), true);
        }
    }

    /// The client was still open until the writer ended it: the room must hear of the leave,
    /// since its reader may be asleep. `lost`: without a close, so it may come back.
    pub(super) fn tell_room_if_ended(&mut self, id: ClientId, ended: bool, lost: bool) {
        if ended {
            let how = if lost {
                Departure::Lost
            } else {
                Departure::Left
            };
            self.leaves.push_back(Event::Leave { id, how });
            self.hand_over_leaves();
        }
    }

    /// Hands the room the leaves it can take now, in order; the rest wait for the next turn.
    fn hand_over_leaves(&mut self) {
        while let Some(leave) = self.leaves.pop_front() {
            match self.events.try_send(leave) {
                Ok(()) => {}
                Err(TrySendError::Full(leave)) => {
                    self.leaves.push_front(leave);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.leaves.clear();
                    return;
                }
            }
        }
    }

    /// Takes the client out of the writer's hands.
    fn forget(&mut self, slot: usize) -> Option<Client> {
        let client = self.clients.get_mut(slot).and_then(Option::take)?;
        if client.blocked {
            self.blocked -= 1;
        }
        self.writer
            .poller
            .forget(client.delivery.outbox.socket.as_raw_fd());
        self.free.push(slot);
        if self.free.len() == self.clients.len() {
            // Everyone has gone: give back the slots a storm may have grown.
            self.clients = Vec::new();
            self.free = Vec::new();
        }
        // Its cursor goes with it, and the segments only it held can go after the pass.
        self.trim_due = true;
        Some(client)
    }
}

/// Where a timer started at `since` would have started, had the process not been stopped for
/// `gap` meanwhile: later by the pause, never after `now`.
pub(super) fn after_pause(since: Instant, gap: Duration, now: Instant) -> Instant {
    (since + gap).min(now)
}
