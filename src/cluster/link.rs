//! Reaching Redis: who this instance is there, one connection per thread with its own
//! backoff, and the calls that count a slow answer as Redis being away.

use super::*;

/// Who this instance is in Redis: its name, new when the others fence it, and the epoch of
/// the data set it registered in.
#[derive(Clone)]
pub(super) struct Identity {
    pub(super) instance: String,
    pub(super) epoch: String,
}

pub(super) type SharedIdentity = Arc<Mutex<Identity>>;

pub(super) fn identity(shared: &SharedIdentity) -> MutexGuard<'_, Identity> {
    // Each field is replaced whole, so a panic elsewhere cannot leave it half written.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection as it opens: the data set's epoch, and the server's run ID, which changes
/// when Redis restarts or another server takes its place (a failover).
pub(super) struct Opened {
    pub(super) connection: Connection,
    pub(super) epoch: String,
    pub(super) run_id: String,
}

/// Opens a connection, loads the scripts, and learns the data set's epoch. Any failure,
/// including a Redis that cannot take writes (a replica, or one still loading), is a reason.
pub(super) fn open(client: &redis::Client, scripts: &Scripts) -> Result<Opened, String> {
    let mut connection = client
        .get_connection_with_timeout(CALL_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let timeouts = connection
        .set_read_timeout(Some(CALL_TIMEOUT))
        .and_then(|()| connection.set_write_timeout(Some(CALL_TIMEOUT)));
    timeouts.map_err(|e| e.to_string())?;
    for script in scripts.all() {
        script.load(&mut connection).map_err(|e| e.to_string())?;
    }
    let epoch: String = script_call(&scripts.register, &[EPOCH])
        .arg(new_instance_name())
        .query(&mut connection)
        .map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connection)
        .map_err(|e| e.to_string())?;
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(Opened {
        connection,
        epoch,
        run_id,
    })
}

/// Whether Redis can be reached, for one thread: one log line per change, and the backoff.
pub(super) struct Reach {
    pub(super) who: &'static str,
    pub(super) url: String,
    pub(super) down_since: Option<Instant>,
    pub(super) retry_at: Instant,
    pub(super) backoff: Duration,
}

impl Reach {
    pub(super) fn new(who: &'static str, url: &str) -> Reach {
        crate::figures::redis_reached(who, true);
        Reach {
            who,
            url: url.to_owned(),
            down_since: None,
            retry_at: Instant::now(),
            backoff: RETRY_FIRST,
        }
    }

    pub(super) fn up(&mut self) {
        crate::figures::redis_reached(self.who, true);
        if self.down_since.take().is_some() {
            eprintln!("threadchat: {}: redis at {} is back", self.who, self.url);
        }
        self.backoff = RETRY_FIRST;
    }

    pub(super) fn down(&mut self, why: &str) {
        crate::figures::redis_reached(self.who, false);
        if self.down_since.is_none() {
            eprintln!(
                "threadchat: {}: redis at {} is unreachable ({why}); retrying",
                self.who, self.url
            );
            self.down_since = Some(Instant::now());
        }
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MOST);
    }
}

/// A connection for a thread that may wait (the stream and heartbeat threads): it connects
/// again when due, blocking only its own thread.
pub(super) struct Link {
    pub(super) client: redis::Client,
    pub(super) scripts: Arc<Scripts>,
    pub(super) connection: Option<Connection>,
    pub(super) reach: Reach,
    /// The run ID of the server the last connection reached.
    pub(super) run_id: String,
    /// Where to ask the publisher to claim this instance's names again.
    pub(super) jobs: Sender<Job>,
}

impl Link {
    pub(super) fn new(
        client: &redis::Client,
        scripts: &Arc<Scripts>,
        jobs: &Sender<Job>,
        who: &'static str,
        url: &str,
    ) -> Link {
        Link {
            client: client.clone(),
            scripts: scripts.clone(),
            connection: None,
            reach: Reach::new(who, url),
            run_id: String::new(),
            jobs: jobs.clone(),
        }
    }

    /// Runs `call`, connecting first if need be; waits out the backoff while Redis is away.
    /// Any error drops the connection: a server error such as READONLY or LOADING may last,
    /// and it is retried with backoff, never in a tight loop.
    pub(super) fn call<T>(
        &mut self,
        read_timeout: Duration,
        call: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        if self.connection.is_none() {
            thread::sleep(
                self.reach
                    .retry_at
                    .saturating_duration_since(Instant::now()),
            );
            match open(&self.client, &self.scripts) {
                Ok(opened) => {
                    // Another server with the same data set: restarted from an old dump, or
                    // a replica that lagged took over. The names claimed since may be gone,
                    // and a quiet publisher would not notice it.
                    if !self.run_id.is_empty() && opened.run_id != self.run_id {
                        let _ = self.jobs.send(Job::Register);
                    }
                    self.run_id = opened.run_id;
                    self.connection = Some(opened.connection);
                }
                Err(why) => {
                    self.reach.down(&why);
                    return None;
                }
            }
        }
        let connection = self.connection.as_mut()?;
        let _ = connection.set_read_timeout(Some(read_timeout));
        match call(connection) {
            Ok(value) => {
                self.reach.up();
                Some(value)
            }
            Err(e) => {
                self.connection = None;
                self.reach.down(&e.to_string());
                None
            }
        }
    }
}
