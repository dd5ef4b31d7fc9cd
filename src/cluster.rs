//! Several instances, one room: every line goes through one Redis stream.
//!
//! With `--redis`, the room no longer appends its lines to its own log. It adds each one
//! (joins, says, leaves) to the stream `threadchat:room` with XADD, and a `stream` thread reads
//! the stream back in order (XREAD BLOCK, in batches) and hands every entry to the room, which
//! appends it to the log. Lines from this instance come back the same way as everyone else's,
//! so every client on every instance sees the same lines in the same order: Redis's.
//!
//! Nicknames are claimed in one hash, atomically, so no two instances hand out the same one.
//! Each instance keeps a heartbeat key with a time to live, and the set of names it holds. A
//! `heartbeat` thread renews its own key and looks for instances whose key has expired: one
//! script, run atomically by Redis, announces each of a dead instance's clients as left and
//! frees their names, so exactly one survivor does it, once.
//!
//! While Redis is unreachable the room fails fast: a say gets a notice for its sender alone,
//! a newcomer is turned away with close 1013, and leaves wait to be announced. The stream
//! thread reconnects with backoff and resumes from the last entry it read.

use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use redis::{Connection, Value};

use crate::room::{ClientId, Event};
use crate::trace::Trace;

/// The stream every instance adds its lines to and reads the room from.
const STREAM: &str = "threadchat:room";
/// Nickname -> the instance holding it.
const NICKNAMES: &str = "threadchat:nicknames";
/// Every instance that has announced itself.
const INSTANCES: &str = "threadchat:instances";

/// How often an instance renews its heartbeat and looks for dead ones.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// An instance whose heartbeat is this old is gone. Detection takes at most this plus
/// [`HEARTBEAT_EVERY`]: 13 s.
const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// A Redis call that takes longer than this counts as Redis being unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one XREAD waits for new entries before asking again.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Entries taken by one XREAD.
const READ_BATCH: usize = 1000;
/// Reconnection backoff: the first wait, doubled up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(4);

/// Claims a nickname for an instance, and records it in the instance's set, atomically.
const CLAIM: &str = "if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then \
     redis.call('SADD', KEYS[2], ARGV[1]) return 1 end return 0";

/// Frees a nickname the instance holds.
const RELEASE: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
     redis.call('HDEL', KEYS[1], ARGV[1]) end redis.call('SREM', KEYS[2], ARGV[1]) return 1";

/// If instance ARGV[1] is still listed but its heartbeat has expired: announces each of its
/// clients as left, frees their names, and forgets it. Atomic, so one caller does it once.
const REAP: &str = "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 or \
     redis.call('EXISTS', KEYS[2]) == 1 then return -1 end \
     local names = redis.call('SMEMBERS', KEYS[3]) \
     for _, name in ipairs(names) do \
       redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'line', ' .... ' .. name .. ' has left.') \
       if redis.call('HGET', KEYS[5], name) == ARGV[1] then redis.call('HDEL', KEYS[5], name) end \
     end \
     redis.call('DEL', KEYS[3]) redis.call('SREM', KEYS[1], ARGV[1]) return #names";

fn alive_key(instance: &str) -> String {
    format!("threadchat:alive:{instance}")
}

fn held_key(instance: &str) -> String {
    format!("threadchat:held:{instance}")
}

/// Redis did not answer: the caller tells its client, or tries again later.
#[derive(Debug, PartialEq)]
pub struct Unreachable;

/// One line as the stream carries it.
#[derive(Debug)]
pub struct Entry {
    pub id: String,
    pub line: String,
    /// For a join line: the instance and the client it announces.
    pub joined: Option<(String, ClientId)>,
}

/// A connection that fails fast while Redis is away and reconnects with backoff.
struct Link {
    client: redis::Client,
    url: String,
    connection: Option<Connection>,
    retry_at: Instant,
    backoff: Duration,
    /// Who is speaking, for the one log line when Redis goes away or comes back.
    who: &'static str,
}

impl Link {
    fn open(url: &str, who: &'static str) -> Result<Link, String> {
        use redis::IntoConnectionInfo;
        let info = url
            .into_connection_info()
            .map_err(|e| format!("--redis {url}: {e}"))?;
        // No CLIENT SETINFO when connecting: the client waits for each of its two replies in
        // turn, so a Redis that does not answer would hold the room for two timeouts. Whether
        // Redis answers is the next call's business, with one timeout.
        let quiet = info.redis_settings().clone().set_skip_set_lib_name();
        let client = redis::Client::open(info.set_redis_settings(quiet))
            .map_err(|e| format!("--redis {url}: {e}"))?;
        Ok(Link {
            client,
            url: url.to_owned(),
            connection: None,
            retry_at: Instant::now(),
            backoff: RETRY_FIRST,
            who,
        })
    }

    /// Runs `call` on the connection, connecting first if need be. While Redis is away
    /// (until the next retry time) it fails at once.
    fn call<T>(
        &mut self,
        read_timeout: Duration,
        call: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Unreachable> {
        if self.connection.is_none() {
            if Instant::now() < self.retry_at {
                return Err(Unreachable);
            }
            match self.client.get_connection_with_timeout(CALL_TIMEOUT) {
                Ok(connection) => {
                    let _ = connection.set_write_timeout(Some(CALL_TIMEOUT));
                    self.connection = Some(connection);
                }
                Err(_) => return Err(self.went_away()),
            }
        }
        let connection = self.connection.as_mut().ok_or(Unreachable)?;
        let _ = connection.set_read_timeout(Some(read_timeout));
        match call(connection) {
            // Redis is back once it answers, not merely once a connection opens: a stopped
            // process's kernel still accepts connections.
            Ok(value) => {
                if self.backoff > RETRY_FIRST {
                    eprintln!("threadchat: {}: redis at {} is back", self.who, self.url);
                    self.backoff = RETRY_FIRST;
                }
                Ok(value)
            }
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                self.connection = None;
                Err(self.went_away())
            }
            Err(e) => {
                eprintln!("threadchat: {}: redis: {e}", self.who);
                Err(Unreachable)
            }
        }
    }

    fn went_away(&mut self) -> Unreachable {
        if self.backoff == RETRY_FIRST {
            eprintln!(
                "threadchat: {}: redis at {} is unreachable; retrying",
                self.who, self.url
            );
        }
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MOST);
        Unreachable
    }
}

/// The room's side of the cluster: it claims and frees nicknames and publishes lines.
pub struct Cluster {
    link: Link,
    /// This instance's name in Redis: new at every start.
    instance: String,
    max_entries: u64,
    trace: Trace,
}

impl Cluster {
    /// Connects, and returns the cluster and the stream's last entry, where reading starts.
    pub fn connect(url: &str, max_entries: u64, trace: Trace) -> Result<(Cluster, String), String> {
        let mut link = Link::open(url, "room")?;
        let instance = format!("{:016x}", rand::random::<u64>());
        let last = link
            .call(CALL_TIMEOUT, |c| {
                redis::cmd("XREVRANGE")
                    .arg(STREAM)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query::<Value>(c)
            })
            .map_err(|_| format!("cannot reach redis at {url}"))?;
        let from = entries_of(&last)
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
        let mut cluster = Cluster {
            link,
            instance,
            max_entries,
            trace,
        };
        cluster
            .heartbeat()
            .map_err(|_| format!("cannot reach redis at {url}"))?;
        Ok((cluster, from))
    }

    /// This instance's name in Redis.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Claims `nickname` for this instance; false if another instance holds it.
    pub fn claim(&mut self, nickname: &str) -> Result<bool, Unreachable> {
        let keys = [NICKNAMES.to_owned(), held_key(&self.instance)];
        let instance = self.instance.clone();
        self.link.call(CALL_TIMEOUT, |c| {
            let claimed: i64 = redis::cmd("EVAL")
                .arg(CLAIM)
                .arg(2)
                .arg(&keys)
                .arg(nickname)
                .arg(&instance)
                .query(c)?;
            Ok(claimed == 1)
        })
    }

    /// Frees a nickname this instance holds.
    pub fn release(&mut self, nickname: &str) -> Result<(), Unreachable> {
        let keys = [NICKNAMES.to_owned(), held_key(&self.instance)];
        let instance = self.instance.clone();
        self.link.call(CALL_TIMEOUT, |c| {
            redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(2)
                .arg(&keys)
                .arg(nickname)
                .arg(&instance)
                .query::<Value>(c)
                .map(drop)
        })
    }

    /// Adds a line to the stream; `joined` marks it as the join of one of our clients.
    pub fn publish(&mut self, line: &str, joined: Option<ClientId>) -> Result<(), Unreachable> {
        let mut command = redis::cmd("XADD");
        command
            .arg(STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_entries)
            .arg("*")
            .arg("line")
            .arg(line);
        if let Some(client) = joined {
            command
                .arg("joined")
                .arg(format!("{}:{client}", self.instance));
        }
        let id: String = self.link.call(CALL_TIMEOUT, |c| command.query(c))?;
        if self.trace.is_on() {
            self.trace
                .decision("stream", &format!("XADD {STREAM} -> {id}: {line:?}"));
        }
        Ok(())
    }

    /// Renews this instance's heartbeat.
    fn heartbeat(&mut self) -> Result<(), Unreachable> {
        let alive = alive_key(&self.instance);
        let instance = self.instance.clone();
        self.link.call(CALL_TIMEOUT, |c| {
            redis::pipe()
                .cmd("SET")
                .arg(&alive)
                .arg(1)
                .arg("PX")
                .arg(HEARTBEAT_TTL.as_millis() as u64)
                .ignore()
                .cmd("SADD")
                .arg(INSTANCES)
                .arg(&instance)
                .ignore()
                .query::<()>(c)
        })
    }

    /// A cluster handle for the heartbeat thread: same instance, its own connection.
    fn for_heartbeat(&self) -> Result<Cluster, String> {
        Ok(Cluster {
            link: Link::open(&self.link.url, "heartbeat")?,
            instance: self.instance.clone(),
            max_entries: self.max_entries,
            trace: self.trace,
        })
    }

    /// Announces the clients of every instance whose heartbeat has expired as left.
    fn reap_the_dead(&mut self) -> Result<(), Unreachable> {
        let instances: Vec<String> = self.link.call(CALL_TIMEOUT, |c| {
            redis::cmd("SMEMBERS").arg(INSTANCES).query(c)
        })?;
        for dead in instances.iter().filter(|i| **i != self.instance) {
            let keys = [
                INSTANCES.to_owned(),
                alive_key(dead),
                held_key(dead),
                STREAM.to_owned(),
                NICKNAMES.to_owned(),
            ];
            let max_entries = self.max_entries;
            let reaped: i64 = self.link.call(CALL_TIMEOUT, |c| {
                redis::cmd("EVAL")
                    .arg(REAP)
                    .arg(keys.len())
                    .arg(&keys)
                    .arg(dead)
                    .arg(max_entries)
                    .query(c)
            })?;
            if reaped >= 0 {
                eprintln!(
                    "threadchat: instance {dead} is gone; announced its {reaped} client(s) as left"
                );
            }
        }
        Ok(())
    }

    /// Starts the threads that read the stream into the room and keep this instance alive.
    pub fn start(&self, from: String, events: Sender<Event>) -> Result<(), String> {
        let mut link = Link::open(&self.link.url, "stream")?;
        let trace = self.trace;
        spawn("stream", move || {
            read_stream(&mut link, from, events, trace)
        })?;
        let mut heartbeat = self.for_heartbeat()?;
        spawn("heartbeat", move || loop {
            std::thread::sleep(HEARTBEAT_EVERY);
            if heartbeat.heartbeat().is_ok() {
                let _ = heartbeat.reap_the_dead();
            }
        })?;
        Ok(())
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map(drop)
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

/// The stream thread: reads the stream from `from` on, in order, for ever, and hands each
/// batch to the room. After an outage it goes on from the last entry it read.
fn read_stream(link: &mut Link, mut from: String, events: Sender<Event>, trace: Trace) {
    loop {
        let reply = link.call(READ_BLOCK + CALL_TIMEOUT, |c| {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(&from)
                .query::<Value>(c)
        });
        let entries = match reply {
            Ok(Value::Array(streams)) => streams.first().map(entries_of).unwrap_or_default(),
            Ok(_) => continue, // nothing new within READ_BLOCK
            Err(Unreachable) => {
                std::thread::sleep(link.retry_at.saturating_duration_since(Instant::now()));
                continue;
            }
        };
        let Some(last) = entries.last() else {
            continue;
        };
        if trace.is_on() {
            trace.decision(
                "stream",
                &format!(
                    "XREAD {STREAM} after {from}: {} entries, up to {}",
                    entries.len(),
                    last.id
                ),
            );
        }
        from = last.id.clone();
        if events.send(Event::Stream(entries)).is_err() {
            return; // the room has stopped
        }
    }
}

/// The entries in an XREAD stream reply `[name, [[id, [field, value, ...]], ...]]`, or in an
/// XREVRANGE reply `[[id, [field, value, ...]], ...]`.
fn entries_of(reply: &Value) -> Vec<Entry> {
    let list = match reply {
        Value::Array(parts) if parts.len() == 2 && matches!(parts[1], Value::Array(_)) => {
            match (&parts[0], &parts[1]) {
                (Value::BulkString(_), Value::Array(list)) => list.as_slice(),
                _ => parts.as_slice(),
            }
        }
        Value::Array(list) => list.as_slice(),
        _ => &[],
    };
    list.iter().filter_map(entry_of).collect()
}

fn entry_of(value: &Value) -> Option<Entry> {
    let Value::Array(parts) = value else {
        return None;
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let mut entry = Entry {
        id: text(id)?,
        line: String::new(),
        joined: None,
    };
    for pair in fields.chunks(2) {
        match (
            pair.first().and_then(text).as_deref(),
            pair.get(1).and_then(text),
        ) {
            (Some("line"), Some(line)) => entry.line = line,
            (Some("joined"), Some(who)) => {
                entry.joined = who.rsplit_once(':').and_then(|(instance, client)| {
                    Some((instance.to_owned(), client.parse().ok()?))
                });
            }
            _ => {}
        }
    }
    Some(entry)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_entries_from_an_xread_reply() {
        let entry = |id: &str, fields: &[&str]| {
            Value::Array(vec![
                bulk(id),
                Value::Array(fields.iter().map(|f| bulk(f)).collect()),
            ])
        };
        let reply = Value::Array(vec![
            bulk(STREAM),
            Value::Array(vec![
                entry("1-0", &["line", "user-1: hi"]),
                entry(
                    "2-0",
                    &["line", " .... user-2 has joined.", "joined", "abc:7"],
                ),
            ]),
        ]);
        let entries = entries_of(&reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].line, "user-1: hi");
        assert_eq!(entries[0].joined, None);
        assert_eq!(entries[1].id, "2-0");
        assert_eq!(entries[1].joined, Some(("abc".to_owned(), 7)));
    }
}
