//! What the room does beside the chat, off a message's path: each second it publishes its
//! gauges for the admin port, feeds systemd's watchdog and gives free heap back; after a
//! storm of leaves it shrinks its tables.

use std::time::Duration;

use super::Room;
use crate::figures;
use crate::sys;

/// A writer's pass takes milliseconds: one that has lasted this long is stuck, and systemd's
/// watchdog is no longer fed (the admin port's `/healthz` uses the same bound).
pub const WRITER_PASS_MOST_MS: u64 = 3_000;

/// How often the room publishes its gauges (members, sessions, names) and shows it is alive.
pub(super) const PULSE_EVERY: Duration = Duration::from_secs(1);

/// How long after the room has halved it gives memory back: the departed clients' threads
/// free their buffers just after their leave reaches the room.
const GIVE_BACK_AFTER: Duration = Duration::from_secs(1);

impl Room {
    /// What the room holds memory for: its members, and sessions (a member's session counts
    /// twice, which only makes the room give memory back a little later).
    fn held(&self) -> usize {
        self.members.len() + self.sessions.len()
    }

    /// After a join or a session's return: the most the room has held since memory was
    /// last given back.
    pub(super) fn note_peak(&mut self) {
        self.peak = self.peak.max(self.held());
    }

    /// Each time the room has halved since memory was last given back, it is given back a
    /// moment later (the departed clients' threads free their buffers just after their leave
    /// reaches the room), so it costs little however many leave.
    pub(super) fn give_back_when_halved(&mut self) {
        if self.held() * 2 <= self.peak {
            self.peak = self.held();
            self.give_back = crossbeam_channel::after(GIVE_BACK_AFTER);
        }
    }

    /// After a storm of joins and leaves, gives back the memory the departed held: the
    /// tables' spare room, log segments nobody reads any more, and the heap the readers freed. It runs each time the room has
    /// halved since the last time, down to empty, so it costs little however many leave.
    pub(super) fn shrink(&mut self) {
        self.members.shrink_to_fit();
        self.taken.shrink_to_fit();
        self.sessions.shrink();
        self.order.shrink();
        // Segments the departed were the last to read, appended after their writers let go.
        self.logs.iter().for_each(|log| log.reader().trim());
        sys::give_back_free_heap();
        self.give_back = crossbeam_channel::never();
    }

    /// Publishes the room's gauges for the admin port, and that the room still answers.
    pub(super) fn pulse(&mut self) {
        let room = &self.figures.room;
        let mut members = [0u64; 2];
        for member in self.members.values() {
            members[member.outbox.dialect as usize] += 1;
        }
        for (gauge, count) in room.members.iter().zip(members) {
            figures::set(gauge, count);
        }
        let waiting = self.sessions.waiting() + self.order.seats_waiting();
        figures::set(&room.sessions_waiting, waiting as u64);
        figures::set(&room.nicknames, self.taken.len() as u64);
        figures::set(&room.alive_ms, figures::since_start_ms());
        // Free heap goes back every second, as it frees up. Left to a moment after the room
        // has emptied, much of it could not go: by then later allocations are scattered
        // through the freed pages, and glibc gives back only whole free pages. Measured at
        // 4,000 sessions: 53 us of the room's CPU at the median, 0.6 ms at most.
        sys::give_back_free_heap();
        // systemd's watchdog is fed here, so it restarts a server whose room is stuck, or
        // whose writer has been in one pass for longer than a live one ever is.
        let now = figures::since_start_ms();
        let stuck = (self.writers.iter())
            .any(|w| pass_overran(figures::get(&w.figures.busy_since_ms), now));
        if !stuck {
            sys::notify_systemd("WATCHDOG=1");
        }
    }
}

/// Whether a writer whose current pass began at `busy_since_ms` (0: it is not in one) has
/// been in it too long, at `now_ms`.
pub fn pass_overran(busy_since_ms: u64, now_ms: u64) -> bool {
    busy_since_ms != 0 && now_ms.saturating_sub(busy_since_ms) > WRITER_PASS_MOST_MS
}
