//! When the cluster takes names away from this instance: the others took it for dead and
//! freed every name (fenced: every client must come back), or Redis lost one name and
//! another client claimed it meanwhile. Both close with 1012 "service restart", which tells
//! browsers and scripts to reconnect.

use super::*;

impl Room {
    /// The other instances announced our clients as left and freed their names (they took
    /// this instance for dead): every member must come back as a newcomer. Close 1012
    /// "service restart" tells browsers and scripts to reconnect.
    pub(super) fn restart_everyone(&mut self) {
        crate::figures::add(&crate::figures::CLUSTER.fenced, 1);
        eprintln!("threadchat: the other instances took this one for dead; closing every client");
        let restart = wire::close_frame(CLOSE_SERVICE_RESTART, "service restart");
        for (_, member) in self.members.drain() {
            self.writers[member.outbox.writer].close(&member.outbox, Some(restart.clone()));
        }
        for (id, newcomer) in std::mem::take(&mut self.newcomers) {
            self.turn_away(id, &newcomer.member.outbox, UNREACHABLE);
        }
        for (id, outbox) in self.order.take_resumers() {
            self.turn_away(id, &outbox, UNREACHABLE);
        }
        self.taken.clear();
        self.order.waiting_seats.clear();
        self.order.draws.clear();
        self.order.gone.clear();
        // The others announced the sessions' clients too: they come back as newcomers.
        self.sessions = Sessions::new(self.sessions.window());
        self.expiry = crossbeam_channel::never();
        self.stop_numbering_if_unused();
        if let Some(publisher) = &self.order.publisher {
            publisher.restarted();
        }
    }

    /// Another client holds the member's name now (Redis lost it meanwhile): close 1012, so
    /// it comes back under another. The name is not this member's to announce.
    pub(super) fn lose_name(&mut self, id: ClientId) {
        if let Some(member) = self.members.remove(&id) {
            let restart = wire::close_frame(CLOSE_SERVICE_RESTART, "service restart");
            self.writers[member.outbox.writer].close(&member.outbox, Some(restart));
            self.taken.remove(&member.number);
            if let Some(token) = &member.session {
                self.sessions.close(token);
            }
        }
    }
}
