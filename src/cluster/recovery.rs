//! What the publisher does when the cluster changes under it: Redis comes back as another
//! server (restarted empty, or failed over), and every name this instance's clients hold is
//! claimed again; or the others took this instance for dead, and it goes on under a new name.

use super::*;

impl Desk {
    /// Redis lost its data, or another server holds it now (a restart, a failover): adopt
    /// its epoch and claim again the names this instance's clients hold. A name another
    /// client claimed meanwhile is no longer ours: its client must come back under another.
    pub(super) fn register(&mut self) {
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        let epoch: Result<String, _> = script_call(&self.scripts.register, &[EPOCH])
            .arg(new_instance_name())
            .query(connection);
        let epoch = match epoch {
            Ok(epoch) => epoch,
            Err(e) => return self.lost_connection(&e.to_string()),
        };
        let instance = {
            let mut who = identity(&self.identity);
            who.epoch = epoch;
            who.instance.clone()
        };
        if self.held.is_empty() {
            return;
        }
        let mut claim = script_call(
            &self.scripts.register_names,
            &[NICKNAMES, &held_key(&instance)],
        );
        for (name, id) in &self.held {
            claim.arg(name).arg(holder(&instance, *id));
        }
        let lost: Vec<String> = match claim.query(connection) {
            Ok(lost) => lost,
            Err(e) => return self.lost_connection(&e.to_string()),
        };
        eprintln!(
            "threadchat: publisher: registered {} name(s) again; {} taken meanwhile",
            self.held.len(),
            lost.len()
        );
        for name in lost {
            if let Some(id) = self.held.remove(&name) {
                let _ = self.news.send(News::NameLost { id });
            }
        }
    }

    /// This instance was reaped: the others announced its clients as left and freed their
    /// names. It goes on under a new name, and the room closes every client so they rejoin;
    /// until the room says it has, what it sends is for the freed names, and is refused.
    pub(super) fn fenced(&mut self, instance: &str) {
        {
            let mut who = identity(&self.identity);
            if who.instance != instance {
                return; // already done
            }
            who.instance = new_instance_name();
            eprintln!(
                "threadchat: publisher: the others took instance {instance} for dead; \
                 going on as {}",
                who.instance
            );
        }
        self.fenced = true;
        crate::figures::set(&crate::figures::CLUSTER.fencing, 1);
        self.held.clear();
        self.owed.clear();
        self.number = 0;
        // Fenced by itself after a long stop, it may be the only one left to announce its
        // clients: the same script the others run, which does it once whoever runs it.
        if let Some(connection) = self.connection.as_mut() {
            let (alive, held, marks) = (
                alive_key(instance),
                held_key(instance),
                instance_key(instance),
            );
            let keys = [INSTANCES, &alive, &held, STREAM, NICKNAMES, &marks];
            let _: redis::RedisResult<i64> = script_call(&self.scripts.reap, &keys)
                .arg(instance)
                .arg(self.max_entries)
                .arg(FENCE_KEEP.as_secs())
                .arg(self.window_ms)
                .query(connection);
        }
        for Doubtful { item, .. } in std::mem::take(&mut self.doubtful) {
            self.refuse(item, Refusal::Unreachable);
        }
        let _ = self.news.send(News::Fenced);
    }
}
