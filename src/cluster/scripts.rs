//! What the cluster keeps in Redis, and the Lua scripts that change it: each one atomic,
//! each one checking that the data set and this instance are still the ones it knew.

use super::*;
use crate::wire;

/// The stream every instance adds its lines to and reads the room from.
pub(super) const STREAM: &str = "threadchat:room";
/// Nickname -> the instance holding it.
pub(super) const NICKNAMES: &str = "threadchat:nicknames";
/// Every instance that has announced itself.
pub(super) const INSTANCES: &str = "threadchat:instances";
/// A random value set once per Redis data set: it changes only when Redis lost its data.
pub(super) const EPOCH: &str = "threadchat:epoch";
/// Nickname -> the token of its session, for a client of the resume dialect. The session
/// itself is the hash `threadchat:session:<token>`: its nickname, and the `holder` of the
/// name (`instance:client`).
pub(super) const SESSION_NAMES: &str = "threadchat:session-names";
/// Token -> when (ms, Redis's clock) a dropped session's window ends.
pub(super) const DETACHED: &str = "threadchat:detached";
/// A session's hash is this and its token.
const SESSION_PREFIX: &str = "threadchat:session:";
/// The set of names an instance holds is this and the instance's name.
const HELD_PREFIX: &str = "threadchat:held:";

/// What every script may name without a key of its own: the keys derived from a token or an
/// instance, and the leave line of the wire contract, each spelled once, here and in
/// `wire.rs`.
fn prelude() -> String {
    let (before, after) = wire::LEFT;
    format!(
        "local SESSION = '{SESSION_PREFIX}'\n\
         local SESSION_NAMES = '{SESSION_NAMES}'\n\
         local DETACHED = '{DETACHED}'\n\
         local HELD = '{HELD_PREFIX}'\n\
         local function left(name) return '{before}' .. name .. '{after}' end\n"
    )
}

/// Checks, for every script that places a line, that Redis still has our data (the epoch)
/// and that this instance was not reaped, and takes the request's number. The instance's hash
/// keeps `done`, the highest number applied, raised only here, and `floor`, below which
/// requests in doubt were settled as never applied: a number at or under either is void (a
/// request that arrives after its fate was decided).
/// KEYS: epoch, instance:<instance>. ARGV: epoch, number.
pub(super) const ADMIT: &str = "
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
pub(super) const SAY: &str = "
local refused = admit() if refused then return refused end
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'line', ARGV[4])
";

/// A join: claims the name for this instance's client (the name's value is
/// `instance:client`), records it as held, announces it, and opens its session if it has a
/// token, whose `floor` (the first line it may ever get back) is its own join; or answers
/// 'taken'.
/// KEYS: epoch, instance, stream, nicknames, held:<instance>, session names.
/// ARGV: epoch, number, max entries, line, nickname, instance:client, token or ''.
pub(super) const JOIN: &str = "
local refused = admit() if refused then return refused end
if redis.call('HSETNX', KEYS[4], ARGV[5], ARGV[6]) == 0 then return 'taken' end
redis.call('SADD', KEYS[5], ARGV[5])
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'line', ARGV[4], 'joined', ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', SESSION .. ARGV[7], 'nickname', ARGV[5], 'holder', ARGV[6], 'floor', id)
  redis.call('HSET', KEYS[6], ARGV[5], ARGV[7])
end
return id
";

/// Ends the session of name `name`, if it has one. The session keys are derived from the
/// token, so the cluster needs one Redis (or a primary with replicas), not a Redis Cluster.
pub(super) const END_SESSION: &str = "
local function end_session(name)
  local token = redis.call('HGET', SESSION_NAMES, name)
  if token then
    redis.call('HDEL', SESSION_NAMES, name)
    redis.call('DEL', SESSION .. token)
    redis.call('ZREM', DETACHED, token)
  end
end
";

/// A leave, announced only if the name is still this very client's: no retry, reap or race
/// announces it twice, or for a name someone else holds now.
/// KEYS: epoch, instance, stream, nicknames, held. ARGV: epoch, max entries, line, nickname,
/// instance:client.
pub(super) const LEAVE: &str = "
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
pub(super) const LATER: &str = "
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
pub(super) const DETACH: &str = "
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
if redis.call('HGET', KEYS[2], 'reaped') then return 'fenced' end
if redis.call('HGET', KEYS[4], ARGV[4]) ~= ARGV[5] then return 'gone' end
redis.call('SREM', KEYS[5], ARGV[4])
local token = redis.call('HGET', KEYS[6], ARGV[4])
if token and redis.call('EXISTS', SESSION .. token) == 1 then
  local key = SESSION .. token
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
pub(super) const RESUME: &str = "
local refused = admit() if refused then return refused end
local key = SESSION .. ARGV[5]
local s = redis.call('HMGET', key, 'nickname', 'holder', 'floor')
if not s[1] or redis.call('HGET', KEYS[4], s[1]) ~= s[2] then return 'unknown' end
redis.call('SREM', HELD .. string.match(s[2], '^(.*):'), s[1])
redis.call('HSET', KEYS[4], s[1], ARGV[4])
redis.call('SADD', KEYS[5], s[1])
redis.call('HSET', key, 'holder', ARGV[4])
redis.call('ZREM', KEYS[6], ARGV[5])
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'resumed', ARGV[4], 'from', s[2], 'nickname', s[1], 'floor', s[3] or '0-0')
";

/// Ends the sessions whose window ended (on Redis's clock) without their client: each is
/// announced as left once, if its name is still its own. Any instance may run it.
/// KEYS: detached, nicknames, stream. ARGV: max entries, most sessions.
pub(super) const EXPIRE: &str = "
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local count = 0
for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local s = redis.call('HMGET', SESSION .. token, 'nickname', 'holder')
  redis.call('ZREM', KEYS[1], token)
  redis.call('DEL', SESSION .. token)
  if s[1] and redis.call('HGET', SESSION_NAMES, s[1]) == token then
    redis.call('HDEL', SESSION_NAMES, s[1])
  end
  if s[1] and redis.call('HGET', KEYS[2], s[1]) == s[2] then
    redis.call('HDEL', KEYS[2], s[1])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'line', left(s[1]))
    count = count + 1
  end
end
return count
";

/// After lost replies: returns the highest number applied, and raises the floor to
/// `ARGV[1]`, so that none of the requests in doubt can apply any more. Asked again (its own
/// reply lost), it answers the same. KEYS: instance.
pub(super) const SETTLE: &str = "
local m = redis.call('HMGET', KEYS[1], 'done', 'floor', 'reaped')
if m[3] then return 'fenced' end
if tonumber(m[2] or '0') < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'floor', ARGV[1]) end
return tonumber(m[1] or '0')
";

/// Adopts the data set's epoch, setting it if there is none. It always writes, so a replica
/// refuses it: a connection that cannot write is no connection. KEYS: epoch. ARGV: fresh.
pub(super) const REGISTER: &str = "
local epoch = redis.call('GET', KEYS[1]) or ARGV[1]
redis.call('SET', KEYS[1], epoch)
return epoch
";

/// Claims again, after Redis lost or rolled back its data, the names this instance's clients
/// hold; returns those another client claimed meanwhile.
/// KEYS: nicknames, held:<instance>. ARGV: name, instance:client, name, instance:client...
pub(super) const REGISTER_NAMES: &str = "
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
pub(super) const HEARTBEAT: &str = "
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
pub(super) const REAP: &str = "
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local names = redis.call('SMEMBERS', KEYS[3])
local prefix = ARGV[1] .. ':'
local count = 0
for _, name in ipairs(names) do
  local holder = redis.call('HGET', KEYS[5], name)
  if holder and string.sub(holder, 1, #prefix) == prefix then
    local token = redis.call('HGET', SESSION_NAMES, name)
    if token and redis.call('EXISTS', SESSION .. token) == 1 then
      local t = redis.call('TIME')
      redis.call('ZADD', DETACHED, t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[4], token)
    else
      redis.call('HDEL', KEYS[5], name)
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'line', left(name))
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

pub(super) fn session_key(token: &str) -> String {
    format!("{SESSION_PREFIX}{token}")
}

pub(super) fn alive_key(instance: &str) -> String {
    format!("threadchat:alive:{instance}")
}

pub(super) fn held_key(instance: &str) -> String {
    format!("{HELD_PREFIX}{instance}")
}

/// The instance's own marks: `done`, `floor`, and `reaped` once the others fenced it.
pub(super) fn instance_key(instance: &str) -> String {
    format!("threadchat:instance:{instance}")
}

/// The value a name has in the nicknames hash: which instance's which client holds it.
pub(super) fn holder(instance: &str, client: ClientId) -> String {
    format!("{instance}:{client}")
}

/// A Lua script, loaded into Redis by every connection as it opens and then called by its
/// SHA-1, which Redis computes.
pub(super) struct Script {
    pub(super) code: String,
    pub(super) sha: OnceLock<String>,
}

impl Script {
    pub(super) fn new(code: &str) -> Script {
        Script {
            code: format!("{}{code}", prelude()),
            sha: OnceLock::new(),
        }
    }

    pub(super) fn load(&self, connection: &mut Connection) -> redis::RedisResult<()> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&self.code)
            .query(connection)?;
        let _ = self.sha.set(sha);
        Ok(())
    }
}

/// A call of one of the scripts with its keys; the caller adds the arguments.
pub(super) fn script_call(script: &Script, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    let sha = script.sha.get().map_or("", String::as_str);
    cmd.arg(sha).arg(keys.len()).arg(keys);
    cmd
}

pub(super) fn new_instance_name() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The scripts, compiled once; each connection loads them when it opens.
pub(super) struct Scripts {
    pub(super) say: Script,
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) detach: Script,
    pub(super) resume: Script,
    pub(super) expire: Script,
    pub(super) settle: Script,
    pub(super) register: Script,
    pub(super) register_names: Script,
    pub(super) heartbeat: Script,
    pub(super) reap: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
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

    pub(super) fn all(&self) -> [&Script; 11] {
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
