//! Several instances, one room: every line goes through one Redis stream.
//!
//! With `--redis`, a line's place in the order is its place in the stream `threadchat:room`.
//! The room never talks to Redis itself. It hands each item (a join, a line, a leave) to the
//! **publisher** thread, which owns the connection that writes, sends everything waiting in
//! one pipelined round trip, and answers only what failed, as news on a channel of its own. The **stream** thread
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

use crate::dialect::Position;
use crate::event::{ClientId, Entry};
use crate::trace::Trace;

mod heartbeat;
mod link;
mod news;
mod placing;
mod publisher;
mod reader;
mod recovery;
mod scripts;

use heartbeat::*;
use link::*;
pub use news::*;
pub use publisher::Publisher;
use publisher::*;
use reader::*;
use scripts::*;

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
