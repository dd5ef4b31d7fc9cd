//! The publisher: the one thread that writes to Redis. The room hands it items through a
//! bounded queue; it sends everything waiting in one pipelined round trip and answers, as
//! news, only what failed.

use super::*;
use crate::sys;

/// What the publisher is asked.
pub(super) enum Job {
    Item(Item),
    /// Redis lost its data: register the names this instance holds again.
    Register,
    /// A script answered that this instance (by that name) was reaped.
    Fenced(String),
    /// The room has closed every client after the fencing: what it sends from now on is
    /// for the instance under its new name.
    Restarted,
    /// A resumed session moved a name to this instance's client, or away from this
    /// instance (`None`).
    Holds(String, Option<ClientId>),
    /// The server is stopping: answer once what is waiting has been sent.
    Flush(Sender<()>),
}

/// The room's handle on the cluster: where it hands items to be placed.
pub struct Publisher {
    pub(super) jobs: Sender<Job>,
    pub(super) identity: SharedIdentity,
}

impl Publisher {
    /// Connects, registers this instance, and starts the publisher, stream and heartbeat
    /// threads, which tell the room through `news`.
    pub fn start(
        url: &str,
        max_entries: u64,
        resume_window: Duration,
        trace: Trace,
        news: Sender<News>,
    ) -> Result<Publisher, String> {
        use redis::IntoConnectionInfo;
        let info = url
            .into_connection_info()
            .map_err(|e| format!("--redis {url}: {e}"))?;
        // No CLIENT SETINFO when connecting: the client waits for each of its two replies in
        // turn, so a Redis that does not answer would hold a connection attempt for two more
        // timeouts. Whether Redis answers is the business of the calls that follow.
        let quiet = info.redis_settings().clone().set_skip_set_lib_name();
        let client = redis::Client::open(info.set_redis_settings(quiet))
            .map_err(|e| format!("--redis {url}: {e}"))?;
        let scripts = Arc::new(Scripts::new());
        let unreachable = |why: String| format!("cannot use redis at {url}: {why}");
        let mut opened = open(&client, &scripts).map_err(unreachable)?;
        // The recent past, read once: clients of other instances may resume here from it.
        let recent: Value = redis::cmd("XREVRANGE")
            .arg(STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(RESUMABLE_AT_START)
            .query(&mut opened.connection)
            .map_err(|e| unreachable(e.to_string()))?;
        let mut recent = entries_of(&recent);
        recent.reverse();
        let from = recent
            .last()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
        let instance = new_instance_name();
        let identity = Arc::new(Mutex::new(Identity {
            instance: instance.clone(),
            epoch: opened.epoch,
        }));
        let (jobs, inbox) = crossbeam_channel::unbounded();
        let mut heartbeat = Heartbeat {
            link: Link::new(&client, &scripts, &jobs, "heartbeat", url),
            identity: identity.clone(),
            jobs: jobs.clone(),
            healthy_since: None,
            max_entries,
            window_ms: resume_window.as_millis() as u64,
        };
        if !heartbeat.beat() {
            return Err(unreachable("the first heartbeat failed".into()));
        }
        let desk = Desk {
            client: client.clone(),
            scripts: scripts.clone(),
            connection: Some(opened.connection),
            run_id: opened.run_id,
            reach: Reach::new("publisher", url),
            connecting: None,
            identity: identity.clone(),
            inbox,
            news: news.clone(),
            held: HashMap::new(),
            number: 0,
            doubtful: Vec::new(),
            owed: Vec::new(),
            fenced: false,
            max_entries,
            window_ms: resume_window.as_millis() as u64,
            trace,
        };
        if !recent.is_empty() {
            let _ = news.send(News::Stream(placed(recent, &instance)));
        }
        sys::spawn_named("publisher", move || desk.run())?;
        let mut link = Link::new(&client, &scripts, &jobs, "stream", url);
        let reading = identity.clone();
        sys::spawn_named("stream", move || {
            read_stream(&mut link, from, news, reading, trace)
        })?;
        sys::spawn_named("heartbeat", move || heartbeat.run())?;
        Ok(Publisher { jobs, identity })
    }

    /// This instance's name in Redis.
    pub fn instance(&self) -> String {
        identity(&self.identity).instance.clone()
    }

    /// Hands an item to the publisher without waiting. A join or a line finds the queue full
    /// only when Redis cannot keep up: it is refused at once.
    pub fn submit(&self, item: Item) -> Placement {
        let full = self.jobs.len() >= PUBLISH_QUEUE;
        if full && !matches!(item, Item::Leave { .. } | Item::Detach { .. }) {
            return Placement::Refused(item, Refusal::Unreachable);
        }
        let sent = self.jobs.send(Job::Item(item));
        crate::figures::set(&crate::figures::CLUSTER.queue, self.jobs.len() as u64);
        match sent {
            Ok(()) => Placement::Later,
            Err(crossbeam_channel::SendError(Job::Item(item))) => {
                Placement::Refused(item, Refusal::Unreachable)
            }
            Err(_) => Placement::Later,
        }
    }

    /// A resumed session's name is now held by this instance's `client`, or (`None`) no
    /// longer by this instance.
    pub fn holds(&self, nickname: &str, client: Option<ClientId>) {
        let _ = self.jobs.send(Job::Holds(nickname.to_owned(), client));
    }

    /// The room has closed every client after hearing it was fenced.
    pub fn restarted(&self) {
        let _ = self.jobs.send(Job::Restarted);
    }

    /// Gives what is waiting (the last leaves) a moment to reach Redis.
    pub fn flush(&self) {
        let (done, flushed) = crossbeam_channel::bounded(1);
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = flushed.recv_timeout(FLUSH_FOR);
        }
    }
}

/// An item sent whose reply was lost: applied or not is settled once Redis answers again.
pub(super) struct Doubtful {
    pub(super) number: u64,
    pub(super) item: Item,
}

/// The publisher thread's state: the connection that writes, and what waits for it.
pub(super) struct Desk {
    pub(super) client: redis::Client,
    pub(super) scripts: Arc<Scripts>,
    pub(super) connection: Option<Connection>,
    /// The run ID of the server the last connection reached.
    pub(super) run_id: String,
    pub(super) reach: Reach,
    /// A connection being opened on a thread of its own, and where it will arrive.
    pub(super) connecting: Option<Receiver<Result<Opened, String>>>,
    pub(super) identity: SharedIdentity,
    pub(super) inbox: Receiver<Job>,
    pub(super) news: Sender<News>,
    /// The names this instance's clients hold in Redis, to register again if Redis loses
    /// them: name -> client.
    pub(super) held: HashMap<String, ClientId>,
    /// The number of the last request that places a line.
    pub(super) number: u64,
    pub(super) doubtful: Vec<Doubtful>,
    /// Leaves and detaches not yet placed: kept until Redis takes them.
    pub(super) owed: Vec<Item>,
    /// Fenced, and the room has not yet closed its clients: what it sent before is for names
    /// the others freed, and is refused.
    pub(super) fenced: bool,
    pub(super) max_entries: u64,
    /// How long a dropped session waits for its client.
    pub(super) window_ms: u64,
    pub(super) trace: Trace,
}

/// What one reply says.
pub(super) enum Reply {
    /// Placed; the stream ID.
    Placed(String),
    /// Nothing placed, for the reason Redis gave (a script's answer or an error).
    Not(String),
}

pub(super) fn reply_of(value: &Value) -> Reply {
    match value {
        Value::ServerError(e) => Reply::Not(e.to_string()),
        other => match text(other) {
            Some(t) if t.contains('-') => Reply::Placed(t),
            Some(t) => Reply::Not(t),
            None => Reply::Not(format!("{other:?}")),
        },
    }
}

/// Why a batch placed less than it was asked, most pressing first: each needs its own cure.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Trouble {
    Fenced,
    Lost,
    Away(String),
}

impl Trouble {
    /// Notes the trouble a reply that is no script's plain answer ('taken', 'gone') tells
    /// of, keeping the most pressing one.
    pub(super) fn note(worst: &mut Option<Trouble>, why: String) {
        let this = match why.as_str() {
            "fenced" => Trouble::Fenced,
            "lost" => Trouble::Lost,
            _ => Trouble::Away(why),
        };
        *worst = Some(match worst.take() {
            Some(other) => other.min(this),
            None => this,
        });
    }
}

impl Desk {
    pub(super) fn run(mut self) {
        loop {
            let first = match &self.connecting {
                Some(arriving) => select! {
                    recv(self.inbox) -> job => job.ok(),
                    recv(arriving) -> opened => {
                        self.connecting = None;
                        self.opened(opened.unwrap_or_else(|_| Err("no connection".into())));
                        None
                    }
                },
                None => {
                    let wait = self
                        .reach
                        .retry_at
                        .saturating_duration_since(Instant::now());
                    if self.connection.is_none() && wait.is_zero() {
                        self.connect();
                    }
                    if self.connection.is_none() {
                        self.inbox.recv_timeout(wait.max(RETRY_FIRST)).ok()
                    } else if !self.doubtful.is_empty() || !self.owed.is_empty() {
                        self.inbox.try_recv().ok()
                    } else {
                        match self.inbox.recv() {
                            Ok(job) => Some(job),
                            Err(_) => return, // the room has stopped
                        }
                    }
                }
            };
            let mut jobs: Vec<Job> = first.into_iter().collect();
            while jobs.len() < MOST_PER_ROUND_TRIP {
                match self.inbox.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.handle(jobs);
        }
    }

    /// Opens a connection on a thread of its own (resolving the name included), so that
    /// the publisher goes on answering meanwhile.
    pub(super) fn connect(&mut self) {
        let (done, arriving) = crossbeam_channel::bounded(1);
        let (client, scripts) = (self.client.clone(), self.scripts.clone());
        let started = thread::Builder::new()
            .name("redis-connect".into())
            .spawn(move || {
                let _ = done.send(open(&client, &scripts));
            });
        match started {
            Ok(_) => self.connecting = Some(arriving),
            Err(e) => self.reach.down(&e.to_string()),
        }
    }

    /// A connection is open. A new data set (an epoch of its own) or another server (a
    /// restart, a failover, which may have rolled the data back) may have lost the names
    /// this instance holds: they are claimed again.
    pub(super) fn opened(&mut self, opened: Result<Opened, String>) {
        match opened {
            Ok(opened) => {
                let elsewhere = opened.run_id != self.run_id;
                let lost = opened.epoch != identity(&self.identity).epoch;
                self.connection = Some(opened.connection);
                self.run_id = opened.run_id;
                self.reach.up();
                if elsewhere || lost {
                    self.register();
                }
            }
            Err(why) => self.reach.down(&why),
        }
    }

    pub(super) fn handle(&mut self, jobs: Vec<Job>) {
        crate::figures::set(&crate::figures::CLUSTER.queue, self.inbox.len() as u64);
        let mut items = Vec::new();
        let mut flushes = Vec::new();
        let mut register = false;
        for job in jobs {
            match job {
                Job::Item(item @ (Item::Leave { .. } | Item::Detach { .. })) => {
                    self.owed.push(item)
                }
                Job::Item(item) if self.fenced => self.refuse(item, Refusal::Unreachable),
                Job::Item(item) => items.push(item),
                Job::Register => register = true,
                Job::Fenced(instance) => self.fenced(&instance),
                Job::Restarted => {
                    self.fenced = false;
                    crate::figures::set(&crate::figures::CLUSTER.fencing, 0);
                }
                Job::Holds(nickname, Some(id)) => drop(self.held.insert(nickname, id)),
                Job::Holds(nickname, None) => drop(self.held.remove(&nickname)),
                Job::Flush(done) => flushes.push(done),
            }
        }
        if register && self.connection.is_some() {
            self.register();
        }
        if self.connection.is_some() && !self.doubtful.is_empty() {
            self.settle();
        }
        match self.connection.take() {
            Some(connection) => self.send(connection, items),
            None => items
                .into_iter()
                .for_each(|item| self.refuse(item, Refusal::Unreachable)),
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_full_queue_refuses_joins_and_lines_at_once_but_keeps_every_leave() {
        // Nobody takes the jobs: the publisher is stuck on a Redis that does not answer.
        let (jobs, _stuck) = crossbeam_channel::unbounded();
        let identity = Identity {
            instance: "i".into(),
            epoch: "e".into(),
        };
        let publisher = Publisher {
            jobs,
            identity: Arc::new(Mutex::new(identity)),
        };
        let say = |id| Item::Say {
            id,
            line: format!("user-{id}: hi"),
        };
        for id in 0..PUBLISH_QUEUE as ClientId {
            assert!(matches!(publisher.submit(say(id)), Placement::Later));
        }
        let refused = |placement| matches!(placement, Placement::Refused(_, Refusal::Unreachable));
        assert!(refused(publisher.submit(say(0))), "a line past the queue");
        let join = Item::Join {
            id: 1,
            nickname: "user-1".into(),
            session: None,
        };
        assert!(refused(publisher.submit(join)), "a newcomer past the queue");
        let leave = Item::Leave {
            id: 2,
            nickname: "user-2".into(),
        };
        assert!(matches!(publisher.submit(leave), Placement::Later));
        let detach = Item::Detach {
            id: 3,
            nickname: "user-3".into(),
            wait: Duration::from_secs(1),
            owed: None,
        };
        assert!(matches!(publisher.submit(detach), Placement::Later));
    }

    #[test]
    fn a_reply_places_only_with_a_stream_id() {
        assert!(matches!(
            reply_of(&bulk("1700000000000-0")),
            Reply::Placed(_)
        ));
        assert!(matches!(reply_of(&bulk("taken")), Reply::Not(t) if t == "taken"));
        assert!(matches!(reply_of(&Value::Nil), Reply::Not(_)));
    }
}
