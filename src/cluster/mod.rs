//! Several instances, one room: every line goes through one Redis stream.
//!
//! With `--redis`, a line's place in the order is its place in the stream `threadchat:room`.
//! The room never talks to Redis itself. It hands each item (a join, a line, a leave) to the
//! **publisher** thread, which owns the connection that writes, sends everything waiting in
//! one pipelined round trip, and answers only what failed, as events. The **stream** thread
//! reads the stream back in order and hands every entry to the room, which appends it to
//! its log; this instance's own lines come back that way too, so every client on every
//! instance sees Redis's one order. A **heartbeat** thread keeps this instance alive in
//! Redis and announces the clients of instances that have died.
//!
//! Every outcome is exact:
//! - Joins and leaves are one script each. A join claims its name, records it as held by
//!   this instance and appends the join line, atomically; a leave appends its line only if
//!   this instance still held the name, so no retry, reap or race announces it twice.
//! - Each line and join carries a number, in order, and Redis keeps the highest this
//!   instance has had applied. When a reply is lost (a timeout: applied or not?), the
//!   publisher asks again once Redis answers, and raises the mark so that the lost request
//!   can never apply late: what was applied stays, what was not is refused, aloud.
//! - An instance reaps another only after its own heartbeats have succeeded for the whole
//!   time to live, so a pause of Redis itself reaps nobody. Reaping fences the dead
//!   instance: every script it runs from then on is refused, and it closes its clients with
//!   1012 so they come back under names that are theirs again.
//! - Redis restarted without its data is noticed by an epoch key every script checks: each
//!   instance registers again the names it holds. Lines lost from the stream, by trimming
//!   or a restart, give the clients of an instance that missed them one line saying so.
//!
//! While Redis is away, nothing waits for it: a line gets ` .... not sent`, a newcomer close
//! 1013, leaves are kept until Redis is back, and reconnecting (name lookup included)
//! happens on a thread of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use redis::{Connection, Value};

use crate::event::{ClientId, Entry, Event, Item, Placement, Position, Refusal, Resumed};
use crate::trace::Trace;

/// The stream every instance adds its lines to and reads the room from.
const STREAM: &str = "threadchat:room";
/// Nickname -> the instance holding it.
const NICKNAMES: &str = "threadchat:nicknames";
/// Every instance that has announced itself.
const INSTANCES: &str = "threadchat:instances";
/// A random value set once per Redis data set: it changes only when Redis lost its data.
const EPOCH: &str = "threadchat:epoch";
/// Nickname -> the token of its session, for a client of the resume dialect. The session
/// itself is the hash `threadchat:session:<token>`: its nickname, and the `holder` of the
/// name (`instance:client`).
const SESSION_NAMES: &str = "threadchat:session-names";
/// Token -> when (ms, Redis's clock) a dropped session's window ends.
const DETACHED: &str = "threadchat:detached";

/// How often an instance renews its heartbeat and looks for dead ones.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// An instance whose heartbeat is this old is gone. Detection takes at most this plus
/// [`HEARTBEAT_EVERY`]: 13 s.
const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// A reaped instance's fence outlives any pause it may come back from.
const FENCE_KEEP: Duration = Duration::from_secs(24 * 3600);
/// A Redis call that takes longer than this counts as Redis being unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one XREAD waits for new entries before asking again.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Entries taken by one XREAD.
const READ_BATCH: usize = 1000;
/// Items sent in one round trip at most.
const MOST_PER_ROUND_TRIP: usize = 1000;
/// Joins and lines waiting for the publisher; past this they are refused at once. Leaves are
/// never refused: there are at most as many as clients.
const PUBLISH_QUEUE: usize = 4096;
/// Reconnection backoff: the first wait, doubled up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(4);
/// How long a stopping server waits for its last leaves to reach Redis.
const FLUSH_FOR: Duration = Duration::from_secs(1);
/// Lines of the stream an instance reads as it starts: a client of another instance (stopped
/// for a restart, say) resumes here from its last line if it is among them. About 1 MB.
const RESUMABLE_AT_START: usize = 10_000;
/// Sessions whose window has ended, ended by one heartbeat at most.
const MOST_EXPIRED_PER_BEAT: usize = 1000;

/// Checks, for every script that places a line, that Redis still has our data (the epoch)
/// and that this instance was not reaped, and takes the request's number. The instance's hash
/// keeps `done`, the highest number applied, raised only here, and `floor`, below which
/// requests in doubt were settled as never applied: a number at or under either is void (a
/// request that arrives after its fate was decided).
/// KEYS: epoch, instance:<instance>. ARGV: epoch, number.
const ADMIT: &str = "
local function admit()
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
  local m = redis.call('HMGET', KEYS[2], 'done', 'floor', 'reaped')
  if m[3] then return 'fenced' end
  local n = tonumber(ARGV[2])
  if tonumber(m[1] or '0') >= n or tonumber(m[2] or '0') >= n then return 'void' end
  redis.call('HSET', KEYS[2], 'done', ARGV[2])
  return nil
end
";

/// A line. KEYS: epoch, instance, stream. ARGV: epoch, number, max entries, line.
const SAY: &str = "
local refused = admit() if refused then return refused end
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'line', ARGV[4])
";

/// A join: claims the name for this instance's client (the name's value is
/// `instance:client`), records it as held, announces it, and opens its session if it has a
/// token, whose `floor` (the first line it may ever get back) is its own join; or answers
/// 'taken'.
/// KEYS: epoch, instance, stream, nicknames, held:<instance>, session names.
/// ARGV: epoch, number, max entries, line, nickname, instance:client, token or ''.
const JOIN: &str = "
local refused = admit() if refused then return refused end
if redis.call('HSETNX', KEYS[4], ARGV[5], ARGV[6]) == 0 then return 'taken' end
redis.call('SADD', KEYS[5], ARGV[5])
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'line', ARGV[4], 'joined', ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', 'threadchat:session:' .. ARGV[7], 'nickname', ARGV[5], 'holder', ARGV[6], 'floor', id)
  redis.call('HSET', KEYS[6], ARGV[5], ARGV[7])
end
return id
";

/// Ends the session of name `name`, if it has one. The session keys are derived from the
/// token, so the cluster needs one Redis (or a primary with replicas), not a Redis Cluster.
const END_SESSION: &str = "
local function end_session(name)
  local token = redis.call('HGET', 'threadchat:session-names', name)
  if token then
    redis.call('HDEL', 'threadchat:session-names', name)
    redis.call('DEL', 'threadchat:session:' .. token)
    redis.call('ZREM', 'threadchat:detached', token)
  end
end
";

/// A leave, announced only if the name is still this very client's: no retry, reap or race
/// announces it twice, or for a name someone else holds now.
/// KEYS: epoch, instance, stream, nicknames, held. ARGV: epoch, max entries, line, nickname,
/// instance:client.
const LEAVE: &str = "
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
if redis.call('HGET', KEYS[2], 'reaped') then return 'fenced' end
if redis.call('HGET', KEYS[4], ARGV[4]) ~= ARGV[5] then return 'gone' end
redis.call('HDEL', KEYS[4], ARGV[4])
redis.call('SREM', KEYS[5], ARGV[4])
end_session(ARGV[4])
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'line', ARGV[3])
";

/// Whether stream ID `a` comes after `b` (`b` may be missing). Both halves of an ID fit a
/// Lua number exactly.
const LATER: &str = "
local function later(a, b)
  if not b then return true end
  local am, an = string.match(a, '^(%d+)-(%d+)$')
  local bm, bn = string.match(b, '^(%d+)-(%d+)$')
  if not am then return false end
  if not bm then return true end
  am, an, bm, bn = tonumber(am), tonumber(an), tonumber(bm), tonumber(bn)
  return am > bm or (am == bm and an > bn)
end
";

/// A resumable client dropped without a close: if the name is still this very client's, its
/// session waits for it until the window ends (on Redis's clock), the name still taken and
/// nothing announced; the name is no longer this instance's to claim again. Without a
/// session (Redis lost it), an ordinary leave.
/// KEYS: epoch, instance, stream, nicknames, held, session names, detached.
/// The session's floor rises to the first line its connection may not have had (ARGV[7], a
/// stream ID, or '' if unknown), so that a resume replays only what it missed.
/// ARGV: epoch, max entries, leave line, nickname, instance:client, window (ms), owed from.
const DETACH: &str = "
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
if redis.call('HGET', KEYS[2], 'reaped') then return 'fenced' end
if redis.call('HGET', KEYS[4], ARGV[4]) ~= ARGV[5] then return 'gone' end
redis.call('SREM', KEYS[5], ARGV[4])
local token = redis.call('HGET', KEYS[6], ARGV[4])
if token and redis.call('EXISTS', 'threadchat:session:' .. token) == 1 then
  local key = 'threadchat:session:' .. token
  if ARGV[7] ~= '' and later(ARGV[7], redis.call('HGET', key, 'floor')) then
    redis.call('HSET', key, 'floor', ARGV[7])
  end
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[7], t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[6], token)
  return 'detached'
end
redis.call('HDEL', KEYS[4], ARGV[4])
end_session(ARGV[4])
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'line', ARGV[3])
";

/// A client presents a session's token: its name moves to this instance's client, unheard,
/// and a stream entry without a line tells every instance (the one that had the session
/// closes its connection if it still has it), with the session's floor. 'unknown' if no session has the token, or its
/// name is no longer its own.
/// KEYS: epoch, instance, stream, nicknames, held:<instance>, detached.
/// ARGV: epoch, number, max entries, instance:client, token.
const RESUME: &str = "
local refused = admit() if refused then return refused end
local key = 'threadchat:session:' .. ARGV[5]
local s = redis.call('HMGET', key, 'nickname', 'holder', 'floor')
if not s[1] or redis.call('HGET', KEYS[4], s[1]) ~= s[2] then return 'unknown' end
redis.call('SREM', 'threadchat:held:' .. string.match(s[2], '^(.*):'), s[1])
redis.call('HSET', KEYS[4], s[1], ARGV[4])
redis.call('SADD', KEYS[5], s[1])
redis.call('HSET', key, 'holder', ARGV[4])
redis.call('ZREM', KEYS[6], ARGV[5])
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'resumed', ARGV[4], 'from', s[2], 'nickname', s[1], 'floor', s[3] or '0-0')
";

/// Ends the sessions whose window ended (on Redis's clock) without their client: each is
/// announced as left once, if its name is still its own. Any instance may run it.
/// KEYS: detached, nicknames, stream. ARGV: max entries, most sessions.
const EXPIRE: &str = "
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local count = 0
for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local s = redis.call('HMGET', 'threadchat:session:' .. token, 'nickname', 'holder')
  redis.call('ZREM', KEYS[1], token)
  redis.call('DEL', 'threadchat:session:' .. token)
  if s[1] and redis.call('HGET', 'threadchat:session-names', s[1]) == token then
    redis.call('HDEL', 'threadchat:session-names', s[1])
  end
  if s[1] and redis.call('HGET', KEYS[2], s[1]) == s[2] then
    redis.call('HDEL', KEYS[2], s[1])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'line', ' .... ' .. s[1] .. ' has left.')
    count = count + 1
  end
end
return count
";

/// After lost replies: returns the highest number applied, and raises the floor to
/// `ARGV[1]`, so that none of the requests in doubt can apply any more. Asked again (its own
/// reply lost), it answers the same. KEYS: instance.
const SETTLE: &str = "
local m = redis.call('HMGET', KEYS[1], 'done', 'floor', 'reaped')
if m[3] then return 'fenced' end
if tonumber(m[2] or '0') < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'floor', ARGV[1]) end
return tonumber(m[1] or '0')
";

/// Adopts the data set's epoch, setting it if there is none. It always writes, so a replica
/// refuses it: a connection that cannot write is no connection. KEYS: epoch. ARGV: fresh.
const REGISTER: &str = "
local epoch = redis.call('GET', KEYS[1]) or ARGV[1]
redis.call('SET', KEYS[1], epoch)
return epoch
";

/// Claims again, after Redis lost or rolled back its data, the names this instance's clients
/// hold; returns those another client claimed meanwhile.
/// KEYS: nicknames, held:<instance>. ARGV: name, instance:client, name, instance:client...
const REGISTER_NAMES: &str = "
local lost = {}
for i = 1, #ARGV, 2 do
  local name, holder = ARGV[i], ARGV[i + 1]
  if redis.call('HSETNX', KEYS[1], name, holder) == 1 or redis.call('HGET', KEYS[1], name) == holder then
    redis.call('SADD', KEYS[2], name)
  else
    table.insert(lost, name)
  end
end
return lost
";

/// Renews this instance's heartbeat. KEYS: epoch, instance, alive:<instance>, instances.
/// ARGV: epoch, time to live (ms), instance.
const HEARTBEAT: &str = "
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
if redis.call('HGET', KEYS[2], 'reaped') then return 'fenced' end
redis.call('SET', KEYS[3], 1, 'PX', ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
return 'ok'
";

/// If instance ARGV[1] is still listed but its heartbeat has expired: announces each of its
/// clients as left (those whose names are still theirs), frees their names, fences it, and
/// forgets it. A client with a session is not announced: its session waits for it, on any
/// instance, for the window. Atomic, so one caller does it once.
/// KEYS: instances, alive:<dead>, held:<dead>, stream, nicknames, instance:<dead>.
/// ARGV: dead, max entries, fence time to live (s), window (ms).
const REAP: &str = "
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local names = redis.call('SMEMBERS', KEYS[3])
local prefix = ARGV[1] .. ':'
local count = 0
for _, name in ipairs(names) do
  local holder = redis.call('HGET', KEYS[5], name)
  if holder and string.sub(holder, 1, #prefix) == prefix then
    local token = redis.call('HGET', 'threadchat:session-names', name)
    if token and redis.call('EXISTS', 'threadchat:session:' .. token) == 1 then
      local t = redis.call('TIME')
      redis.call('ZADD', 'threadchat:detached', t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[4], token)
    else
      redis.call('HDEL', KEYS[5], name)
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'line', ' .... ' .. name .. ' has left.')
      count = count + 1
    end
  end
end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[6], 'reaped', 1)
redis.call('EXPIRE', KEYS[6], ARGV[3])
return count
";

fn session_key(token: &str) -> String {
    format!("threadchat:session:{token}")
}

fn alive_key(instance: &str) -> String {
    format!("threadchat:alive:{instance}")
}

fn held_key(instance: &str) -> String {
    format!("threadchat:held:{instance}")
}

/// The instance's own marks: `done`, `floor`, and `reaped` once the others fenced it.
fn instance_key(instance: &str) -> String {
    format!("threadchat:instance:{instance}")
}

/// The value a name has in the nicknames hash: which instance's which client holds it.
fn holder(instance: &str, client: ClientId) -> String {
    format!("{instance}:{client}")
}

/// A Lua script, loaded into Redis by every connection as it opens and then called by its
/// SHA-1, which Redis computes.
struct Script {
    code: String,
    sha: OnceLock<String>,
}

impl Script {
    fn new(code: &str) -> Script {
        Script {
            code: code.to_owned(),
            sha: OnceLock::new(),
        }
    }

    fn load(&self, connection: &mut Connection) -> redis::RedisResult<()> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&self.code)
            .query(connection)?;
        let _ = self.sha.set(sha);
        Ok(())
    }
}

/// A call of one of the scripts with its keys; the caller adds the arguments.
fn script_call(script: &Script, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    let sha = script.sha.get().map_or("", String::as_str);
    cmd.arg(sha).arg(keys.len()).arg(keys);
    cmd
}

fn new_instance_name() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The scripts, compiled once; each connection loads them when it opens.
struct Scripts {
    say: Script,
    join: Script,
    leave: Script,
    detach: Script,
    resume: Script,
    expire: Script,
    settle: Script,
    register: Script,
    register_names: Script,
    heartbeat: Script,
    reap: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let placing = |body: &str| Script::new(&format!("{ADMIT}{body}"));
        Scripts {
            say: placing(SAY),
            join: placing(JOIN),
            leave: Script::new(&format!("{END_SESSION}{LEAVE}")),
            detach: Script::new(&format!("{END_SESSION}{LATER}{DETACH}")),
            resume: placing(RESUME),
            expire: Script::new(EXPIRE),
            settle: Script::new(SETTLE),
            register: Script::new(REGISTER),
            register_names: Script::new(REGISTER_NAMES),
            heartbeat: Script::new(HEARTBEAT),
            reap: Script::new(REAP),
        }
    }

    fn all(&self) -> [&Script; 11] {
        [
            &self.say,
            &self.join,
            &self.leave,
            &self.detach,
            &self.resume,
            &self.expire,
            &self.settle,
            &self.register,
            &self.register_names,
            &self.heartbeat,
            &self.reap,
        ]
    }
}

/// Who this instance is in Redis: its name, new when the others fence it, and the epoch of
/// the data set it registered in.
#[derive(Clone)]
struct Identity {
    instance: String,
    epoch: String,
}

type SharedIdentity = Arc<Mutex<Identity>>;

fn identity(shared: &SharedIdentity) -> MutexGuard<'_, Identity> {
    // Each field is replaced whole, so a panic elsewhere cannot leave it half written.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection as it opens: the data set's epoch, and the server's run ID, which changes
/// when Redis restarts or another server takes its place (a failover).
struct Opened {
    connection: Connection,
    epoch: String,
    run_id: String,
}

/// Opens a connection, loads the scripts, and learns the data set's epoch. Any failure,
/// including a Redis that cannot take writes (a replica, or one still loading), is a reason.
fn open(client: &redis::Client, scripts: &Scripts) -> Result<Opened, String> {
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
struct Reach {
    who: &'static str,
    url: String,
    down_since: Option<Instant>,
    retry_at: Instant,
    backoff: Duration,
}

impl Reach {
    fn new(who: &'static str, url: &str) -> Reach {
        Reach {
            who,
            url: url.to_owned(),
            down_since: None,
            retry_at: Instant::now(),
            backoff: RETRY_FIRST,
        }
    }

    fn up(&mut self) {
        if self.down_since.take().is_some() {
            eprintln!("threadchat: {}: redis at {} is back", self.who, self.url);
        }
        self.backoff = RETRY_FIRST;
    }

    fn down(&mut self, why: &str) {
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
struct Link {
    client: redis::Client,
    scripts: Arc<Scripts>,
    connection: Option<Connection>,
    reach: Reach,
    /// The run ID of the server the last connection reached.
    run_id: String,
    /// Where to ask the publisher to claim this instance's names again.
    jobs: Sender<Job>,
}

impl Link {
    fn new(
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
    fn call<T>(
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

/// What the publisher is asked.
enum Job {
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
    jobs: Sender<Job>,
    identity: SharedIdentity,
}

impl Publisher {
    /// Connects, registers this instance, and starts the publisher, stream and heartbeat
    /// threads, which tell the room through `events`.
    pub fn start(
        url: &str,
        max_entries: u64,
        resume_window: Duration,
        trace: Trace,
        events: Sender<Event>,
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
            events: events.clone(),
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
            let _ = events.send(Event::Stream(placed(recent, &instance)));
        }
        spawn("publisher", move || desk.run())?;
        let mut link = Link::new(&client, &scripts, &jobs, "stream", url);
        let reading = identity.clone();
        spawn("stream", move || {
            read_stream(&mut link, from, events, reading, trace)
        })?;
        spawn("heartbeat", move || heartbeat.run())?;
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
        match self.jobs.send(Job::Item(item)) {
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

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), String> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map(drop)
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

/// An item sent whose reply was lost: applied or not is settled once Redis answers again.
struct Doubtful {
    number: u64,
    item: Item,
}

/// The publisher thread's state: the connection that writes, and what waits for it.
struct Desk {
    client: redis::Client,
    scripts: Arc<Scripts>,
    connection: Option<Connection>,
    /// The run ID of the server the last connection reached.
    run_id: String,
    reach: Reach,
    /// A connection being opened on a thread of its own, and where it will arrive.
    connecting: Option<Receiver<Result<Opened, String>>>,
    identity: SharedIdentity,
    inbox: Receiver<Job>,
    events: Sender<Event>,
    /// The names this instance's clients hold in Redis, to register again if Redis loses
    /// them: name -> client.
    held: HashMap<String, ClientId>,
    /// The number of the last request that places a line.
    number: u64,
    doubtful: Vec<Doubtful>,
    /// Leaves and detaches not yet placed: kept until Redis takes them.
    owed: Vec<Item>,
    /// Fenced, and the room has not yet closed its clients: what it sent before is for names
    /// the others freed, and is refused.
    fenced: bool,
    max_entries: u64,
    /// How long a dropped session waits for its client.
    window_ms: u64,
    trace: Trace,
}

/// What one reply says.
enum Reply {
    /// Placed; the stream ID.
    Placed(String),
    /// Nothing placed, for the reason Redis gave (a script's answer or an error).
    Not(String),
}

fn reply_of(value: &Value) -> Reply {
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
enum Trouble {
    Fenced,
    Lost,
    Away(String),
}

impl Trouble {
    /// Notes the trouble a reply that is no script's plain answer ('taken', 'gone') tells
    /// of, keeping the most pressing one.
    fn note(worst: &mut Option<Trouble>, why: String) {
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
    fn run(mut self) {
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
    fn connect(&mut self) {
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
    fn opened(&mut self, opened: Result<Opened, String>) {
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

    fn handle(&mut self, jobs: Vec<Job>) {
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
                Job::Restarted => self.fenced = false,
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

    /// Sends the owed leaves and `items` in one round trip.
    fn send(&mut self, mut connection: Connection, items: Vec<Item>) {
        if items.is_empty() && self.owed.is_empty() {
            self.connection = Some(connection);
            return;
        }
        let who = identity(&self.identity).clone();
        let (marks, held) = (instance_key(&who.instance), held_key(&who.instance));
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let leaves = std::mem::take(&mut self.owed);
        for item in &leaves {
            let (Item::Leave { id, nickname } | Item::Detach { id, nickname, .. }) = item else {
                continue;
            };
            let (wait, owed) = match item {
                Item::Detach { wait, owed, .. } => (
                    wait.as_millis() as u64,
                    owed.map_or_else(String::new, |Position(ms, n)| format!("{ms}-{n}")),
                ),
                _ => (0, String::new()),
            };
            let keys = [
                EPOCH,
                &marks,
                STREAM,
                NICKNAMES,
                &held,
                SESSION_NAMES,
                DETACHED,
            ];
            let script = match item {
                Item::Detach { .. } => &self.scripts.detach,
                _ => &self.scripts.leave,
            };
            pipe.add_command(
                script_call(script, &keys)
                    .arg(&who.epoch)
                    .arg(self.max_entries)
                    .arg(item.line())
                    .arg(nickname)
                    .arg(holder(&who.instance, *id))
                    .arg(wait)
                    .arg(owed)
                    .clone(),
            );
        }
        let mut sent = Vec::with_capacity(items.len());
        for item in items {
            self.number += 1;
            let cmd = match &item {
                Item::Join {
                    id,
                    nickname,
                    session,
                } => {
                    let keys = [EPOCH, &marks, STREAM, NICKNAMES, &held, SESSION_NAMES];
                    let mut cmd = script_call(&self.scripts.join, &keys);
                    cmd.arg(&who.epoch)
                        .arg(self.number)
                        .arg(self.max_entries)
                        .arg(item.line())
                        .arg(nickname)
                        .arg(holder(&who.instance, *id))
                        .arg(session.as_deref().unwrap_or(""));
                    cmd
                }
                Item::Resume { id, token } => {
                    let keys = [EPOCH, &marks, STREAM, NICKNAMES, &held, DETACHED];
                    let mut cmd = script_call(&self.scripts.resume, &keys);
                    cmd.arg(&who.epoch)
                        .arg(self.number)
                        .arg(self.max_entries)
                        .arg(holder(&who.instance, *id))
                        .arg(token);
                    cmd
                }
                _ => {
                    let mut cmd = script_call(&self.scripts.say, &[EPOCH, &marks, STREAM]);
                    cmd.arg(&who.epoch)
                        .arg(self.number)
                        .arg(self.max_entries)
                        .arg(item.line());
                    cmd
                }
            };
            pipe.add_command(cmd);
            sent.push(Doubtful {
                number: self.number,
                item,
            });
        }
        let replies: Vec<Value> = match pipe.query(&mut connection) {
            Ok(replies) => replies,
            Err(e) => {
                // Applied or not, nobody knows: settled once Redis answers again. A leave is
                // asked again: asked twice, it is announced once.
                self.owed = leaves;
                self.doubtful.extend(sent);
                return self.reach.down(&e.to_string());
            }
        };
        self.connection = Some(connection);
        let mut replies = replies.iter().map(reply_of);
        let mut trouble = None;
        for item in leaves {
            match replies.next() {
                Some(Reply::Placed(at)) => {
                    self.traced("leave", &at, &item.line());
                    self.no_longer_held(&item);
                }
                Some(Reply::Not(why)) if why == "gone" || why == "detached" => {
                    self.no_longer_held(&item);
                }
                Some(Reply::Not(why)) => {
                    self.owed.push(item);
                    Trouble::note(&mut trouble, why);
                }
                None => self.owed.push(item),
            }
        }
        for Doubtful { item, .. } in sent {
            match replies.next() {
                Some(Reply::Placed(at)) => {
                    if let Item::Join { id, nickname, .. } = &item {
                        self.held.insert(nickname.clone(), *id);
                    }
                    self.traced("XADD", &at, &item.line());
                }
                Some(Reply::Not(why)) if why == "taken" => self.refuse(item, Refusal::Taken),
                Some(Reply::Not(why)) if why == "unknown" => self.refuse(item, Refusal::Unknown),
                Some(Reply::Not(why)) => {
                    self.traced("refused", &why, &item.line());
                    self.refuse(item, Refusal::Unreachable);
                    Trouble::note(&mut trouble, why);
                }
                None => self.refuse(item, Refusal::Unreachable),
            }
        }
        match trouble {
            Some(Trouble::Fenced) => {
                let instance = who.instance.clone();
                self.fenced(&instance);
            }
            Some(Trouble::Lost) => self.register(),
            Some(Trouble::Away(why)) => self.lost_connection(&why),
            None => {}
        }
    }

    /// A leave or a detach went through (or was moot): the name is no longer this
    /// instance's to claim again.
    fn no_longer_held(&mut self, item: &Item) {
        if let Item::Leave { nickname, .. } | Item::Detach { nickname, .. } = item {
            self.held.remove(nickname);
        }
    }

    fn lost_connection(&mut self, why: &str) {
        self.connection = None;
        self.reach.down(why);
    }

    /// Settles the requests whose replies were lost: Redis says how far it applied them, and
    /// raises the floor past the rest, which can then never apply.
    fn settle(&mut self) {
        let who = identity(&self.identity).clone();
        let highest = self.doubtful.iter().map(|d| d.number).max().unwrap_or(0);
        let mut pipe = redis::pipe();
        pipe.add_command(
            script_call(&self.scripts.settle, &[&instance_key(&who.instance)])
                .arg(highest)
                .clone(),
        );
        for doubtful in &self.doubtful {
            match &doubtful.item {
                Item::Join { nickname, .. } => {
                    pipe.cmd("HGET").arg(NICKNAMES).arg(nickname);
                }
                Item::Resume { token, .. } => {
                    pipe.cmd("HGET").arg(session_key(token)).arg("holder");
                }
                _ => {}
            }
        }
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        let replies: Vec<Value> = match pipe.query(connection) {
            Ok(replies) => replies,
            Err(e) => return self.lost_connection(&e.to_string()),
        };
        let mut replies = replies.iter();
        let applied = match replies.next() {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            Some(other) => {
                return match text(other).as_deref() {
                    Some("fenced") => self.fenced(&who.instance),
                    other => self.lost_connection(other.unwrap_or("no answer")),
                };
            }
            None => 0,
        };
        for Doubtful { number, item } in std::mem::take(&mut self.doubtful) {
            let holder_now = match &item {
                Item::Join { .. } | Item::Resume { .. } => replies.next().and_then(text),
                _ => None,
            };
            if number > applied {
                self.refuse(item, Refusal::Unreachable);
            } else if let Item::Join { id, nickname, .. } = &item {
                // Applied: its join line is in the stream, unless the name was taken.
                if holder_now == Some(holder(&who.instance, *id)) {
                    self.held.insert(nickname.clone(), *id);
                } else {
                    self.refuse(item, Refusal::Taken);
                }
            } else if let Item::Resume { id, .. } = &item {
                // Applied: its entry is in the stream, unless the token was unknown.
                if holder_now != Some(holder(&who.instance, *id)) {
                    self.refuse(item, Refusal::Unknown);
                }
            }
            // An applied line simply comes back through the stream.
        }
    }

    /// Redis lost its data, or another server holds it now (a restart, a failover): adopt
    /// its epoch and claim again the names this instance's clients hold. A name another
    /// client claimed meanwhile is no longer ours: its client must come back under another.
    fn register(&mut self) {
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
                let _ = self.events.send(Event::NameLost { id });
            }
        }
    }

    /// This instance was reaped: the others announced its clients as left and freed their
    /// names. It goes on under a new name, and the room closes every client so they rejoin;
    /// until the room says it has, what it sends is for the freed names, and is refused.
    fn fenced(&mut self, instance: &str) {
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
        let _ = self.events.send(Event::Fenced);
    }

    fn refuse(&self, item: Item, why: Refusal) {
        let _ = self.events.send(Event::Refused(item, why));
    }

    fn traced(&self, command: &str, id: &str, line: &str) {
        if self.trace.is_on() {
            self.trace
                .decision("stream", &format!("{command} {STREAM} -> {id}: {line:?}"));
        }
    }
}

/// The heartbeat thread: renews this instance's key, and reaps instances whose key expired,
/// but only after its own heartbeats have succeeded for a whole time to live: after a pause
/// of Redis itself every key looks expired, and nobody is dead.
struct Heartbeat {
    link: Link,
    identity: SharedIdentity,
    jobs: Sender<Job>,
    healthy_since: Option<Instant>,
    max_entries: u64,
    window_ms: u64,
}

impl Heartbeat {
    fn run(mut self) {
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
    fn beat(&mut self) -> bool {
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
    fn expire_sessions(&mut self) {
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
    fn reap_the_dead(&mut self) {
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
                eprintln!(
                    "threadchat: instance {dead} is gone; announced its {count} client(s) as left"
                );
            }
        }
    }
}

/// The stream thread: reads the stream from `from` on, in order, for ever, and hands each
/// batch to the room. Before each read it checks that the last entry it read is still
/// there: if trimming or a restart took it, entries after it may be gone too, and the room
/// says so.
fn read_stream(
    link: &mut Link,
    mut from: String,
    events: Sender<Event>,
    identity_of: SharedIdentity,
    trace: Trace,
) {
    // The entry whose loss was last reported: a quiet room must not hear it once a second.
    let mut reported = String::new();
    loop {
        let probe = from != "0-0" && from != reported;
        let reply = link.call(READ_BLOCK + CALL_TIMEOUT, |c| {
            let mut pipe = redis::pipe();
            if probe {
                pipe.cmd("XRANGE")
                    .arg(STREAM)
                    .arg(&from)
                    .arg(&from)
                    .arg("COUNT")
                    .arg(1);
            }
            pipe.cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(&from);
            pipe.query::<Vec<Value>>(c)
        });
        let Some(replies) = reply else {
            continue; // the link waits out its backoff
        };
        let mut replies = replies.iter();
        if probe && replies.next().is_some_and(|r| entries_of(r).is_empty()) {
            if trace.is_on() {
                trace.decision("stream", &format!("{from} is gone: lines were missed"));
            }
            reported = from.clone();
            if events.send(Event::Gap).is_err() {
                return;
            }
        }
        let read = match replies.next() {
            Some(Value::Array(streams)) => streams.first().map(entries_of).unwrap_or_default(),
            _ => continue, // nothing new within READ_BLOCK
        };
        let Some(Raw { id: last, .. }) = read.last() else {
            continue;
        };
        if trace.is_on() {
            let what = format!(
                "XREAD {STREAM} after {from}: {} entries, up to {last}",
                read.len()
            );
            trace.decision("stream", &what);
        }
        from = last.clone();
        let ours = identity(&identity_of).instance.clone();
        if events.send(Event::Stream(placed(read, &ours))).is_err() {
            return; // the room has stopped
        }
    }
}

/// Entries as the room takes them: joins and resumes concern it only when they name one of
/// this instance's (`ours`) clients.
fn placed(read: Vec<Raw>, ours: &str) -> Vec<Entry> {
    let ours =
        |holder: Option<Holder>| holder.and_then(|(instance, id)| (instance == ours).then_some(id));
    read.into_iter()
        .map(|raw| Entry {
            line: raw.line,
            joined: ours(raw.joined),
            position: raw.id.parse().ok(),
            resumed: raw.resumed.map(|(nickname, by, from, floor)| Resumed {
                nickname,
                by: ours(by),
                from: ours(from),
                floor: floor.and_then(|id| id.parse().ok()),
            }),
        })
        .collect()
}

/// Which instance's which client holds a name: `instance:client`, read.
type Holder = (String, ClientId);

/// A resumed session as the stream carries it: its nickname, the client that takes it, the
/// one that had it, and its floor (a stream ID).
type RawResume = (String, Option<Holder>, Option<Holder>, Option<String>);

/// One entry as the stream carries it.
#[derive(Debug, Default, PartialEq)]
struct Raw {
    id: String,
    line: String,
    /// For a join: the instance and the client it announces.
    joined: Option<Holder>,
    resumed: Option<RawResume>,
}

/// The entries in an XREAD stream reply `[name, [[id, [field, value, ...]], ...]]`, or in an
/// XRANGE reply `[[id, [field, value, ...]], ...]`.
fn entries_of(reply: &Value) -> Vec<Raw> {
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

/// `instance:client`, as a name's holder is written.
fn holder_of(text: &str) -> Option<Holder> {
    let (instance, client) = text.rsplit_once(':')?;
    Some((instance.to_owned(), client.parse().ok()?))
}

fn entry_of(value: &Value) -> Option<Raw> {
    let Value::Array(parts) = value else {
        return None;
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let mut raw = Raw {
        id: text(id)?,
        ..Raw::default()
    };
    let (mut by, mut from, mut nickname, mut floor) = (None, None, None, None);
    for pair in fields.chunks(2) {
        let Some(value) = pair.get(1).and_then(text) else {
            continue;
        };
        match pair.first().and_then(text).as_deref() {
            Some("line") => raw.line = value,
            Some("joined") => raw.joined = holder_of(&value),
            Some("resumed") => by = Some(holder_of(&value)),
            Some("from") => from = Some(holder_of(&value)),
            Some("nickname") => nickname = Some(value),
            Some("floor") => floor = Some(value),
            _ => {}
        }
    }
    if let (Some(nickname), Some(by), Some(from)) = (nickname, by, from) {
        raw.resumed = Some((nickname, by, from, floor));
    }
    Some(raw)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
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
                entry(
                    "3-0",
                    &[
                        "resumed", "def:9", "from", "abc:8", "nickname", "user-3", "floor", "2-0",
                    ],
                ),
            ]),
        ]);
        let entries = entries_of(&reply);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].line, "user-1: hi");
        assert_eq!(entries[0].joined, None);
        assert_eq!(entries[1].id, "2-0");
        assert_eq!(entries[1].joined, Some(("abc".to_owned(), 7)));
        let holder = |i: &str, c| Some((i.to_owned(), c));
        assert_eq!(
            entries[2].resumed,
            Some((
                "user-3".to_owned(),
                holder("def", 9),
                holder("abc", 8),
                Some("2-0".to_owned())
            ))
        );
        assert_eq!(entries[2].line, "", "a resume is no line");
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
