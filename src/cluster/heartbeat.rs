//! The heartbeat thread: keeps this instance alive in Redis, ends the sessions whose
//! window has ended, and announces the clients of instances that died.

use super::*;

/// The heartbeat thread: renews this instance's key, and reaps instances whose key expired,
/// but only after its own heartbeats have succeeded for a whole time to live: after a pause
/// of Redis itself every key looks expired, and nobody is dead.
pub(super) struct Heartbeat {
    pub(super) link: Link,
    pub(super) identity: SharedIdentity,
    pub(super) jobs: Sender<Job>,
    pub(super) healthy_since: Option<Instant>,
    pub(super) max_entries: u64,
    pub(super) window_ms: u64,
}

impl Heartbeat {
    pub(super) fn run(mut self) {
        let mut last = Instant::now();
        loop {
            thread::sleep(HEARTBEAT_EVERY);
            // This process was stopped (or starved) longer than the time to live: the others
            // may have reaped it, and a fence in Redis does not last for ever. It fences
            // itself: its clients come back under names that are surely theirs.
            if last.elapsed() > HEARTBEAT_TTL {
                let instance = identity(&self.identity).instance.clone();
                eprintln!(
                    "threadchat: heartbeat: this process was stopped longer than {} s",
                    HEARTBEAT_TTL.as_secs()
                );
                let _ = self.jobs.send(Job::Fenced(instance));
                self.healthy_since = None;
            }
            last = Instant::now();
            let healthy_for = self.beat().then(|| self.healthy_since.map(|t| t.elapsed()));
            if healthy_for.flatten() >= Some(HEARTBEAT_TTL) {
                self.reap_the_dead();
            }
            if healthy_for.is_some() {
                self.expire_sessions();
            }
        }
    }

    /// Renews the heartbeat; says whether it was renewed, and since when it has been
    /// renewed without a failure.
    pub(super) fn beat(&mut self) -> bool {
        let who = identity(&self.identity).clone();
        let scripts = self.link.scripts.clone();
        let (done, alive) = (instance_key(&who.instance), alive_key(&who.instance));
        let answer: Option<String> = self.link.call(CALL_TIMEOUT, |c| {
            script_call(&scripts.heartbeat, &[EPOCH, &done, &alive, INSTANCES])
                .arg(&who.epoch)
                .arg(HEARTBEAT_TTL.as_millis() as u64)
                .arg(&who.instance)
                .query(c)
        });
        match answer.as_deref() {
            Some("ok") => {
                self.healthy_since.get_or_insert_with(Instant::now);
                return true;
            }
            Some("lost") => {
                let _ = self.jobs.send(Job::Register);
            }
            Some("fenced") => {
                let _ = self.jobs.send(Job::Fenced(who.instance));
            }
            _ => {}
        }
        self.healthy_since = None;
        false
    }

    /// Ends the dropped sessions whose window has ended: their leaves are announced once,
    /// whichever instance runs it first.
    pub(super) fn expire_sessions(&mut self) {
        let scripts = self.link.scripts.clone();
        let max_entries = self.max_entries;
        let ended: Option<i64> = self.link.call(CALL_TIMEOUT, |c| {
            script_call(&scripts.expire, &[DETACHED, NICKNAMES, STREAM])
                .arg(max_entries)
                .arg(MOST_EXPIRED_PER_BEAT)
                .query(c)
        });
        if let Some(count) = ended.filter(|n| *n > 0) {
            eprintln!("threadchat: {count} dropped session(s) ended: announced as left");
        }
    }

    /// Announces the clients of every instance whose heartbeat has expired as left.
    pub(super) fn reap_the_dead(&mut self) {
        let ours = identity(&self.identity).instance.clone();
        let Some(instances) = self.link.call(CALL_TIMEOUT, |c| {
            redis::cmd("SMEMBERS")
                .arg(INSTANCES)
                .query::<Vec<String>>(c)
        }) else {
            return;
        };
        let scripts = self.link.scripts.clone();
        for dead in instances.iter().filter(|i| **i != ours) {
            let (max_entries, window_ms) = (self.max_entries, self.window_ms);
            let (alive, held, done) = (alive_key(dead), held_key(dead), instance_key(dead));
            let keys = [INSTANCES, &alive, &held, STREAM, NICKNAMES, &done];
            let reaped: Option<i64> = self.link.call(CALL_TIMEOUT, |c| {
                script_call(&scripts.reap, &keys)
                    .arg(dead)
                    .arg(max_entries)
                    .arg(FENCE_KEEP.as_secs())
                    .arg(window_ms)
                    .query(c)
            });
            // Redis went away: the rest waits for the next heartbeat, which must come first.
            let Some(reaped) = reaped else {
                return;
            };
            if let Some(count) = Some(reaped).filter(|n| *n >= 0) {
                crate::figures::add(&crate::figures::CLUSTER.reaped, count as u64);
                eprintln!(
                    "threadchat: instance {dead} is gone; announced its {count} client(s) as left"
                );
            }
        }
    }
}
