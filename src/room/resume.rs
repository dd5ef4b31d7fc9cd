//! The room's side of resumable sessions: a client that comes back with its token is placed
//! right after the last line it got, unannounced; one that drops without a close keeps its
//! name for the window. The cookbook's room (`mod.rs`) calls these at its hooks: a join of
//! the resume dialect, a drop, and the expiry tick.

use super::*;

/// Where the lines a connection that dropped (or was taken over) is still owed begin: after
/// those its writer handed to the kernel, less what the kernel may still have held for it,
/// its send buffer's worth, which may never have arrived.
pub(super) fn owed_from(outbox: &Outbox) -> u64 {
    outbox
        .handed()
        .saturating_sub(sys::send_buffer_bytes(&outbox.socket))
}

pub(super) const RESUMING_TOO_OFTEN: &str = "resuming too often; try again later";

/// The same, in the resume dialect, where it also marks a session that could not resume.
pub(super) const MISSED_MARK: &str = "missed";

/// How often detached sessions are checked against their window.
pub(super) const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// How long a session closed with 1001 "going away" waits for its client. A browser sends it
/// when its tab reloads, and comes back within a second or two; it sends it as well when the
/// tab is closed for good, which is then announced this much later than a plain close.
pub(super) const RELOAD_GRACE: Duration = Duration::from_secs(5);

/// A client of the resume dialect presenting a session.
pub(super) struct Returning {
    pub(super) from: String,
    pub(super) outbox: Arc<Outbox>,
    pub(super) seat: Arc<Seat>,
    pub(super) token: Token,
    /// The position of the last line it got.
    pub(super) position: Position,
}

impl Room {
    /// A client of the resume dialect presents a session to this instance's table. While the
    /// session waits for it (or is still attached to an older connection, which it takes
    /// over), it comes back under its name, unannounced, right after the last line it got if
    /// the log still keeps it. Else it gets a fresh session, after the mark that lines may
    /// have been missed.
    pub(super) fn resume_here(&mut self, id: ClientId, returning: Returning) {
        let Returning {
            from,
            outbox,
            seat,
            token,
            position,
        } = returning;
        let token = token.as_str();
        let (nickname, number, holder, before) =
            match self.sessions.attach(token, id, Instant::now()) {
                Attach::Unknown => {
                    self.figures.resumed("unknown");
                    return self.handle_new_connection(id, from, outbox, seat, Some(true));
                }
                // Each resume may replay lines: one that comes too often waits, session kept.
                Attach::TooOften => {
                    self.figures.resumed("too_often");
                    return self.turn_away(id, &outbox, RESUMING_TOO_OFTEN);
                }
                Attach::Back { session, before } => (
                    session.nickname.clone(),
                    session.number,
                    session.holder,
                    before,
                ),
            };
        if let Some(older) = before.and_then(|old| self.members.remove(&old)) {
            self.sessions.taken_over(token, owed_from(&older.outbox));
            self.taken_over(older);
        }
        let floor = self.sessions.floor(token);
        let member = Member {
            number,
            nickname,
            from,
            outbox,
            seat,
            session: Some(token.to_owned()),
            holder,
        };
        self.take_back(id, member, position, floor);
    }

    /// The connection that had a session is closed: another one took it over.
    pub(super) fn taken_over(&self, older: Member) {
        let taken_over = wire::close_frame(wire::CLOSE_POLICY, "resumed on another connection");
        self.writers[older.outbox.writer].close(&older.outbox, Some(taken_over));
    }

    /// A session is back on connection `id`: the member reads on right after the last line
    /// it got (`resumed N`, then the N lines it missed) if the log still keeps it, but not
    /// before `floor`, where the lines its session may get back begin (starting there is
    /// marked as a gap); else from now on, after the mark that lines may have been missed.
    pub(super) fn take_back(
        &mut self,
        id: ClientId,
        member: Member,
        position: Position,
        floor: u64,
    ) {
        self.figures.resumed("back");
        let outbox = member.outbox.clone();
        let _ = outbox.nickname.set(member.nickname.clone());
        eprintln!("back  {} from {}", member.nickname, member.from);
        self.trace.decision(&member.nickname, "resumed its session");
        let numbered = &self.logs[1];
        let writer = &self.writers[outbox.writer];
        let back = self
            .sessions
            .back_to(position, numbered.head(), numbered.oldest(), floor);
        let resumed = match back {
            Return::After { at, missed, cut } => numbered
                .cursor_back_at(at)
                .map(|cursor| (cursor, at, missed, cut)),
            Return::Lost => None,
        };
        if let Some((_, at, missed, cut)) = &resumed {
            let resumed = wire::text_frame(&format!("resumed {missed}"));
            let _ = writer.push_before(&outbox, resumed, Some(*at));
            if *cut {
                let _ = writer.push_before(&outbox, wire::text_frame(MISSED_MARK), Some(*at));
            }
        }
        let resumed = resumed.map(|(cursor, _, _, _)| cursor);
        let cursor = resumed.unwrap_or_else(|| {
            // Itself again, but from now on: its place is no longer kept.
            let _ = writer.push(&outbox, wire::text_frame("resumed 0"));
            let _ = writer.push(&outbox, wire::text_frame(MISSED_MARK));
            numbered.cursor_at(numbered.head())
        });
        writer.add(id, outbox, cursor);
        self.members.insert(id, member);
        self.note_peak();
        self.say_early_lines(id);
    }

    /// The sessions whose window has ended without their client: they leave now.
    pub(super) fn expire_sessions(&mut self) {
        let now = Instant::now();
        let seats_waiting = self.order.expire_seats(now);
        for session in self.sessions.expired(now) {
            crate::figures::add(&self.figures.room.windows_ended, 1);
            self.announce_leave(
                session.holder,
                session.number,
                session.nickname,
                "a dropped connection",
            );
        }
        if !self.sessions.any_detached() && !seats_waiting {
            self.expiry = crossbeam_channel::never();
        }
        self.stop_numbering_if_unused();
    }

    /// Whether lines are numbered for the resume dialect: while there are sessions, and
    /// always in a cluster, where a session may come back from another instance.
    pub(super) fn numbering(&self) -> bool {
        self.order.numbers_every_line() || !self.sessions.is_empty()
    }

    /// With no session left, nothing reads the numbered log or resumes into it.
    pub(super) fn stop_numbering_if_unused(&mut self) {
        if !self.numbering() {
            self.logs[1].keep(0);
            self.sessions.forget_lines();
        }
    }

    /// A session for a newcomer of the resume dialect: it hears its token first, before its
    /// own join line (after the mark that lines were missed, when `missed`). A shared order
    /// keeps the session itself; here only this instance's table does.
    pub(super) fn open_session(&mut self, id: ClientId, member: &Member, missed: bool) {
        let Some(token) = &member.session else {
            return;
        };
        if !self.numbering() {
            // From now on the numbered log keeps the recent past for clients that come back.
            self.logs[1].keep(self.logs[1].reader().retention());
        }
        self.open_session_table(id, member, token);
        let writer = &self.writers[member.outbox.writer];
        if missed {
            let _ = writer.push(&member.outbox, wire::text_frame(MISSED_MARK));
        }
        let _ = writer.push(
            &member.outbox,
            wire::text_frame(&format!("session {token}")),
        );
    }

    /// A newcomer's session in this instance's table.
    pub(super) fn open_session_here(&mut self, id: ClientId, member: &Member, token: &Token) {
        // Its join line goes at the head: nothing before it is ever its to get back.
        let joins_at = self.logs[1].head();
        self.sessions
            .open(token, id, &member.nickname, member.number, joins_at);
    }

    /// A member of the resume dialect that dropped without a close (or went away, for the
    /// reload grace) keeps its name and its seat for the window: in this instance's table,
    /// or in Redis, for whichever instance its client reaches. Returns the member whose
    /// leave is to be announced now: any other, and one whose session ended with a close.
    pub(super) fn keep_session_waiting(&mut self, gone: Member, how: Departure) -> Option<Member> {
        let wait = match how {
            Departure::Left => None,
            Departure::Lost => Some(self.sessions.window()),
            Departure::GoingAway => Some(RELOAD_GRACE.min(self.sessions.window())),
        };
        match (&gone.session, wait) {
            (Some(token), Some(wait)) => {
                eprintln!(
                    "drop  {} from {}; its session waits",
                    gone.nickname, gone.from
                );
                self.trace
                    .decision(&gone.nickname, "dropped; its session waits for it");
                self.expiry = tick(EXPIRE_EVERY);
                self.detach(&gone, token, wait);
                return None;
            }
            (Some(token), None) => {
                self.sessions.close(token);
                self.stop_numbering_if_unused();
            }
            (None, _) => {}
        }
        Some(gone)
    }

    /// The session of a member that dropped waits in this instance's table.
    pub(super) fn detach_here(&mut self, gone: &Member, token: &Token, wait: Duration) {
        let (seat, owed) = (gone.seat.clone(), owed_from(&gone.outbox));
        self.sessions
            .detach(token, Instant::now(), wait, seat, owed);
    }
}
