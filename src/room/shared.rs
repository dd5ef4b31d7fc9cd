//! The room's side of a shared order (`--redis`): answers that come back later through the
//! stream (a resume placed by any instance, a line or join refused), and what the cluster
//! tells it of itself (fenced by the others, a name lost while Redis had forgotten it).

use super::*;

/// A client presenting a session to a shared order, waiting for the answer.
pub(super) struct Resumer {
    pub(super) from: String,
    pub(super) outbox: Arc<Outbox>,
    pub(super) seat: Arc<Seat>,
    pub(super) token: Token,
    /// The position of the last line it got.
    pub(super) position: Position,
    /// It left while waiting, and how.
    pub(super) gone: Option<Departure>,
}

/// Draws of a nickname that other instances hold before a newcomer is turned away.
pub(super) const MOST_DRAWS: usize = 100;

/// Close reasons for a client the room cannot take now (close 1013, try again later).
pub(super) const UNREACHABLE: &str = "the room is unreachable; try again later";

/// What the sender alone hears when its line could not be placed.
pub(super) const NOT_SENT: &str = " .... not sent: the room is unreachable";

/// What members hear where lines of the shared order were lost before they could be read.
pub(super) const MISSED: &str = " .... some lines were missed here";

/// Lines a newcomer may say before its join is placed (in a cluster, a round trip to Redis
/// away): they are placed right after its join. More are refused aloud.
pub(super) const EARLY_LINES_MOST: usize = 32;
/// What a newcomer hears for a line past [`EARLY_LINES_MOST`] said before its join.
pub(super) const NOT_YET: &str = " .... not sent: you have not joined yet";

impl Room {
    /// A session moved between connections somewhere in the cluster. The connection that
    /// had it, if ours, is closed without a word (or was already gone); the one that takes
    /// it, if ours, comes back under its name.
    pub(super) fn resumed(&mut self, resumed: Resumed) {
        let Resumed {
            nickname,
            by,
            from,
            floor,
        } = resumed;
        if let Some(old) = from {
            self.waiting_seats.remove(&old);
        }
        if let Some(older) = from.and_then(|old| self.members.remove(&old)) {
            self.taken.remove(&older.number);
            self.taken_over(older);
        }
        if from.is_some() && by.is_none() {
            self.order.holds(&nickname, None);
        }
        let Some((id, resumer)) = by.and_then(|id| Some((id, self.resumers.remove(&id)?))) else {
            return;
        };
        self.order.holds(&nickname, Some(id));
        let number = nickname
            .strip_prefix("user-")
            .and_then(|n| n.parse().ok())
            .unwrap_or(NICKNAME_SPACE);
        self.taken.insert(number);
        let member = Member {
            number,
            nickname,
            from: resumer.from,
            outbox: resumer.outbox,
            seat: resumer.seat,
            session: Some(resumer.token),
            holder: id,
        };
        let floor = floor.map_or(0, |at| self.sessions.offset_of(at, self.logs[1].head()));
        self.take_back(id, member, resumer.position, floor);
        if let Some(how) = resumer.gone {
            self.handle_close_connection(id, how);
        }
    }

    /// A line that got no place: only the client concerned hears of it.
    pub(super) fn refused(&mut self, item: Item, why: Refusal) {
        match item {
            Item::Join { id, .. } => {
                let Some(mut newcomer) = self.newcomers.remove(&id) else {
                    return;
                };
                self.taken.remove(&newcomer.member.number);
                if newcomer.gone {
                    // Its writer still sends the close its reader queued.
                    return self.turn_away(id, &newcomer.member.outbox, UNREACHABLE);
                }
                if why != Refusal::Taken {
                    return self.turn_away(id, &newcomer.member.outbox, UNREACHABLE);
                }
                let drawn = if newcomer.draws < MOST_DRAWS {
                    self.free_number()
                } else {
                    None
                };
                let Some(number) = drawn else {
                    return self.turn_away(id, &newcomer.member.outbox, NO_NAME_FREE);
                };
                newcomer.member.number = number;
                newcomer.member.nickname = format!("user-{number}");
                newcomer.draws += 1;
                self.ask_to_join(id, newcomer);
            }
            Item::Say { id, .. } => {
                if let Some(sender) = self.members.get(&id) {
                    let outbox = sender.outbox.clone();
                    self.figures.line_refused("unreachable");
                    let notice = wire::notice(outbox.dialect, NOT_SENT);
                    let _ = self.writers[outbox.writer].push(&outbox, notice);
                }
            }
            Item::Resume { id, .. } => {
                let Some(resumer) = self.resumers.remove(&id) else {
                    return;
                };
                match (resumer.gone, why) {
                    // Unknown: a fresh session, after the mark. Never an error loop.
                    (None, Refusal::Unknown) => {
                        self.figures.resumed("unknown");
                        self.handle_new_connection(
                            id,
                            resumer.from,
                            resumer.outbox,
                            resumer.seat,
                            Some(true),
                        )
                    }
                    // Redis out of reach: close 1013, and the session is still there to
                    // resume once it is back.
                    _ => {
                        self.figures.resumed("unreachable");
                        self.turn_away(id, &resumer.outbox, UNREACHABLE)
                    }
                }
            }
            // An order keeps a leave until it can place it.
            Item::Leave { .. } | Item::Detach { .. } => {}
        }
    }

    /// The other instances announced our clients as left and freed their names (they took
    /// this instance for dead): every member must come back as a newcomer. Close 1012
    /// "service restart" tells browsers and scripts to reconnect.
    pub(super) fn restart_everyone(&mut self) {
        crate::figures::add(&crate::figures::CLUSTER.fenced, 1);
        eprintln!("threadchat: the other instances took this one for dead; closing every client");
        let restart = wire::close_frame(wire::CLOSE_SERVICE_RESTART, "service restart");
        for (_, member) in self.members.drain() {
            self.writers[member.outbox.writer].close(&member.outbox, Some(restart.clone()));
        }
        for (id, newcomer) in std::mem::take(&mut self.newcomers) {
            self.turn_away(id, &newcomer.member.outbox, UNREACHABLE);
        }
        for (id, resumer) in std::mem::take(&mut self.resumers) {
            self.turn_away(id, &resumer.outbox, UNREACHABLE);
        }
        self.taken.clear();
        self.waiting_seats.clear();
        // The others announced the sessions' clients too: they come back as newcomers.
        self.sessions = Sessions::new(self.sessions.window());
        self.expiry = crossbeam_channel::never();
        self.stop_numbering_if_unused();
        self.order.restarted();
    }

    /// Another client holds the member's name now (Redis lost it meanwhile): close 1012, so
    /// it comes back under another. The name is not this member's to announce.
    pub(super) fn lose_name(&mut self, id: ClientId) {
        if let Some(member) = self.members.remove(&id) {
            let restart = wire::close_frame(wire::CLOSE_SERVICE_RESTART, "service restart");
            self.writers[member.outbox.writer].close(&member.outbox, Some(restart));
            self.taken.remove(&member.number);
            if let Some(token) = &member.session {
                self.sessions.close(token);
            }
        }
    }

    /// A line from a client that is not a member yet: its join (or its resume) is on its way
    /// through a shared order. It is said once the client is a member; past
    /// [`EARLY_LINES_MOST`] the sender alone hears that it was not sent. A client that is
    /// neither was closed while its line was on the way, and its close said so.
    pub(super) fn hold_early_line(&mut self, id: ClientId, text: Utf8Bytes) {
        let outbox = match (self.newcomers.get(&id), self.resumers.get(&id)) {
            (Some(newcomer), _) => &newcomer.member.outbox,
            (None, Some(resumer)) => &resumer.outbox,
            (None, None) => return,
        };
        let early = self.early.entry(id).or_default();
        if early.len() < EARLY_LINES_MOST {
            return early.push(text);
        }
        self.figures.line_refused("not_joined");
        let notice = wire::notice(outbox.dialect, NOT_YET);
        let _ = self.writers[outbox.writer].push(outbox, notice);
    }

    /// The client is a member now: what it said meanwhile is said, in order.
    pub(super) fn say_early_lines(&mut self, id: ClientId) {
        for text in self.early.remove(&id).unwrap_or_default() {
            self.broadcast_to_room(id, text);
        }
    }

    /// A client that left before it was a member (its join, or its resume, on its way): it
    /// is let go once the answer comes. `true` when it was one.
    pub(super) fn left_while_waiting(&mut self, id: ClientId, how: Departure) -> bool {
        if let Some(newcomer) = self.newcomers.get_mut(&id) {
            newcomer.gone = true;
            return true;
        }
        if let Some(resumer) = self.resumers.get_mut(&id) {
            resumer.gone = Some(how);
            return true;
        }
        false
    }
}
