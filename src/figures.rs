//! The figures an operator reads on the admin port.
//!
//! A counter is moved with a relaxed atomic add by the threads whose work it counts: the
//! room's and each writer's by that thread alone; refusals, endings and page answers by the
//! connection threads they happen on. It is read only when the admin port is scraped. No
//! counter is touched per delivery: a writer adds its sends, bytes and delays once per pass
//! (it reads the log's append stamps for the frames it sends). A leaf module: anything may
//! count into it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The statuses a WebSocket handshake is refused with, in the order they are counted.
pub const REFUSAL_STATUSES: [u16; 5] = [400, 403, 426, 429, 503];

/// Why a member left, as the room tells it: the names `/metrics` uses, by
/// [`crate::event::Departure`] (a close or an end by the server; a connection lost without
/// a close; a close with 1001 "going away").
pub const DEPARTURES: [&str; 3] = ["close", "lost", "going_away"];

/// Why a connection ended, as `/metrics` names it: the client closed, it went away (1001),
/// it vanished (a reset, the end of the stream), it was silent past the pong timeout, it sent
/// a message too big, invalid UTF-8, a protocol error or binary, it flooded, it fell too far
/// behind, it took nothing for the write timeout, the server stopped.
pub const ENDINGS: [&str; 11] = [
    "close",
    "going_away",
    "lost",
    "silence",
    "too_big",
    "invalid_utf8",
    "protocol_error",
    "flood",
    "too_slow",
    "write_timeout",
    "shutdown",
];

/// Lines a client sent that were not said, by why: over the flood limit, the room out of
/// reach (a cluster), before its join was placed (past the 32 held).
pub const REFUSED_LINES: [&str; 3] = ["flood", "unreachable", "not_joined"];

/// The statuses the page port answers, in the order counted; anything else counts last.
pub const PAGE_STATUSES: [u16; 9] = [200, 400, 404, 405, 408, 429, 431, 503, 505];

/// Every figure of the server.
#[derive(Default)]
pub struct Figures {
    pub room: RoomFigures,
    /// Handshakes answered with an HTTP error, by [`REFUSAL_STATUSES`].
    pub handshakes_refused: [AtomicU64; REFUSAL_STATUSES.len()],
    /// Page connections refused at the door (429) or for want of room (503).
    pub page_refused: [AtomicU64; 2],
    /// The server is stopping: not ready for anyone.
    pub stopping: AtomicBool,
    /// Connections of the WebSocket port that ended, by [`ENDINGS`].
    pub endings: [AtomicU64; ENDINGS.len()],
    /// Lines not said, by [`REFUSED_LINES`].
    pub refused_lines: [AtomicU64; REFUSED_LINES.len()],
    /// Page answers, by [`PAGE_STATUSES`] and one more for any other.
    pub page_answers: [AtomicU64; PAGE_STATUSES.len() + 1],
    /// Resumes of a session, by [`RESUMES`].
    pub resumes: [AtomicU64; RESUMES.len()],
}

/// What the room thread counts.
#[derive(Default)]
pub struct RoomFigures {
    /// Members by dialect (plain, resume), as of the last pulse.
    pub members: [AtomicU64; 2],
    /// Sessions waiting for their client, as of the last pulse.
    pub sessions_waiting: AtomicU64,
    /// `user-N` names held here, as of the last pulse.
    pub nicknames: AtomicU64,
    pub joins: AtomicU64,
    /// Members that left, by [`DEPARTURES`].
    pub leaves: [AtomicU64; 3],
    /// Sessions whose window ended without their client: their leave is announced then.
    pub windows_ended: AtomicU64,
    /// Lines appended (joins, lines, leaves), and their bytes in the plain log.
    pub lines: AtomicU64,
    pub bytes_appended: AtomicU64,
    /// When the room last went round its loop ([`since_start_ms`]): a room that stops
    /// answering stops moving it.
    pub alive_ms: AtomicU64,
}

/// Upper bounds of the delivery delay's buckets, in seconds: from a tenth of a millisecond
/// (a writer with CPU to spare) past the gather budget (4 ms) to a client seconds behind.
pub const DELAY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A histogram one thread fills without sharing, then adds to its published figures at
/// once: counts per bucket of [`DELAY_BUCKETS`] (the last one past them), and the sum.
#[derive(Default)]
pub struct Histogram {
    pub counts: [u64; DELAY_BUCKETS.len() + 1],
    pub sum_us: u64,
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        let seconds = us as f64 / 1e6;
        let bucket = DELAY_BUCKETS.iter().position(|&b| seconds <= b);
        self.counts[bucket.unwrap_or(DELAY_BUCKETS.len())] += 1;
        self.sum_us += us;
    }
}

/// A [`Histogram`] as published: added to once per pass by its one thread.
#[derive(Default)]
pub struct SharedHistogram {
    pub counts: [AtomicU64; DELAY_BUCKETS.len() + 1],
    pub sum_us: AtomicU64,
}

impl SharedHistogram {
    /// Adds `local` and empties it.
    pub fn take(&self, local: &mut Histogram) {
        for (shared, count) in self.counts.iter().zip(local.counts.iter_mut()) {
            if *count > 0 {
                add(shared, std::mem::take(count));
            }
        }
        add(&self.sum_us, std::mem::take(&mut local.sum_us));
    }
}

/// What one writer thread counts, once per pass.
#[derive(Default)]
pub struct WriterFigures {
    /// From a line's append to its bytes handed to the kernel, for each client: the
    /// server's own share of a line's latency, whatever the client does.
    pub delay: SharedHistogram,
    pub sends: AtomicU64,
    pub bytes: AtomicU64,
    pub clients: AtomicU64,
    /// When its current pass began ([`since_start_ms`]), 0 while it waits: a pass that does
    /// not end is a stuck writer.
    pub busy_since_ms: AtomicU64,
    /// Time spent in passes, in microseconds.
    pub busy_us: AtomicU64,
    /// Clients it evicted for falling too far behind, and closed after the write timeout;
    /// and clients whose connection it found broken (a reset) before their reader did.
    pub too_slow: AtomicU64,
    pub lost: AtomicU64,
    pub write_timeouts: AtomicU64,
    /// Clients whose socket is full now, waiting for epoll to say it has room.
    pub blocked: AtomicU64,
    /// Whether its last pass rested so that lines gather (1) or not (0).
    pub gathering: AtomicU64,
    /// How far behind the head its furthest client was in the last pass, in bytes.
    pub furthest_lag: AtomicU64,
}

impl Figures {
    /// One more connection ended for `why`, one of [`ENDINGS`].
    pub fn ended(&self, why: &str) {
        if let Some(i) = ENDINGS.iter().position(|&e| e == why) {
            add(&self.endings[i], 1);
        }
    }

    /// One more line not said, for `why`, one of [`REFUSED_LINES`].
    pub fn line_refused(&self, why: &str) {
        if let Some(i) = REFUSED_LINES.iter().position(|&e| e == why) {
            add(&self.refused_lines[i], 1);
        }
    }

    /// One more resume that ended as `how`, one of [`RESUMES`].
    pub fn resumed(&self, how: &str) {
        if let Some(i) = RESUMES.iter().position(|&e| e == how) {
            add(&self.resumes[i], 1);
        }
    }

    /// One more page answer with `status`.
    pub fn page_answered(&self, status: u16) {
        let i = PAGE_STATUSES.iter().position(|&s| s == status);
        add(&self.page_answers[i.unwrap_or(PAGE_STATUSES.len())], 1);
    }

    /// The counter of handshakes refused with `status` (one of [`REFUSAL_STATUSES`]; any
    /// other counts as 400).
    pub fn refused_at(&self, status: u16) -> &AtomicU64 {
        let i = REFUSAL_STATUSES.iter().position(|&s| s == status);
        &self.handshakes_refused[i.unwrap_or(0)]
    }
}

/// With `--redis`: which of the cluster's threads (publisher, stream, heartbeat: one bit
/// each) find Redis unreachable now. Process-wide, as the connection to Redis is.
static REDIS_DOWN: AtomicU64 = AtomicU64::new(0);
/// The cluster's threads started: Redis's reachability is a figure at all.
static CLUSTERED: AtomicBool = AtomicBool::new(false);

/// The cluster's thread `who` reached Redis (`up`), or did not.
#[cfg(feature = "redis")]
pub fn redis_reached(who: &str, up: bool) {
    CLUSTERED.store(true, Ordering::Relaxed);
    let bit = match who {
        "publisher" => 1,
        "stream" => 2,
        _ => 4,
    };
    if up {
        REDIS_DOWN.fetch_and(!bit, Ordering::Relaxed);
    } else {
        REDIS_DOWN.fetch_or(bit, Ordering::Relaxed);
    }
}

/// With `--redis`, whether every cluster thread reaches Redis now; `None` without.
pub fn redis_up() -> Option<bool> {
    CLUSTERED
        .load(Ordering::Relaxed)
        .then(|| REDIS_DOWN.load(Ordering::Relaxed) == 0)
}

/// How resumes ended: the session came back, its token was unknown (a fresh session),
/// it was resumed too often, or Redis could not be reached.
pub const RESUMES: [&str; 4] = ["back", "unknown", "too_often", "unreachable"];

/// What the cluster's threads and the room count of the cluster. Process-wide, as the
/// connection to Redis is; zero without `--redis`.
pub struct ClusterFigures {
    /// Items waiting for the publisher, as of the last one handed to it.
    pub queue: AtomicU64,
    /// The publisher's round trips to Redis, in the delivery delay's buckets.
    pub round_trips: SharedHistogram,
    /// Lines of the shared order lost before this instance read them (each told once).
    pub gaps: AtomicU64,
    /// Times the other instances took this one for dead and fenced it.
    pub fenced: AtomicU64,
    /// Clients of dead instances this one announced as left.
    pub reaped: AtomicU64,
    /// 1 from the moment this instance finds itself fenced until the room has closed every
    /// client and the publisher starts afresh: it takes no newcomer meanwhile.
    pub fencing: AtomicU64,
}

pub static CLUSTER: ClusterFigures = ClusterFigures {
    queue: AtomicU64::new(0),
    round_trips: SharedHistogram {
        counts: [const { AtomicU64::new(0) }; DELAY_BUCKETS.len() + 1],
        sum_us: AtomicU64::new(0),
    },
    gaps: AtomicU64::new(0),
    fenced: AtomicU64::new(0),
    reaped: AtomicU64::new(0),
    fencing: AtomicU64::new(0),
};

/// One more of something.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn set(gauge: &AtomicU64, value: u64) {
    gauge.store(value, Ordering::Relaxed);
}

pub fn get(figure: &AtomicU64) -> u64 {
    figure.load(Ordering::Relaxed)
}

/// The same clock in microseconds.
pub fn since_start_us() -> u64 {
    start().0.elapsed().as_micros() as u64
}

/// The process's own clock for figures: milliseconds since it started, never 0.
pub fn since_start_ms() -> u64 {
    start().0.elapsed().as_millis() as u64 + 1
}

/// When the process started: on the monotonic clock, and in seconds since the Unix epoch.
pub fn start() -> &'static (Instant, f64) {
    static START: OnceLock<(Instant, f64)> = OnceLock::new();
    START.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        (Instant::now(), unix)
    })
}
