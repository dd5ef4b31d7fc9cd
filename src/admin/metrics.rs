//! `/metrics`: every figure in the Prometheus text exposition format (version 0.0.4): a
//! `# HELP` and a `# TYPE` line for each, counters ending in `_total`, base units (seconds,
//! bytes). Read when scraped, from the counters each thread keeps ([`crate::figures`]) and,
//! for the process, from `/proc/self`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::context::Shared;
use crate::figures::{
    self, get, SharedHistogram, CLUSTER, DELAY_BUCKETS, DEPARTURES, ENDINGS, PAGE_STATUSES,
    REFUSAL_STATUSES, REFUSED_LINES, RESUMES,
};

/// The exposition, as of now.
/// The exposition, as of now; `admin_refused`: the admin port's own refusals.
pub fn render(shared: &Shared, admin_refused: u64) -> String {
    let mut out = Exposition(String::with_capacity(4096));
    let figures = &shared.figures;
    let room = &figures.room;

    out.family(
        "threadchat_clients",
        "gauge",
        "Members of the room, by dialect.",
    );
    for (dialect, gauge) in ["plain", "resume"].iter().zip(&room.members) {
        out.sample("threadchat_clients", &[("dialect", dialect)], get(gauge));
    }
    out.one(
        "threadchat_sessions_waiting",
        "gauge",
        "Sessions waiting for their client to come back.",
        get(&room.sessions_waiting),
    );
    out.one(
        "threadchat_nicknames",
        "gauge",
        "user-N names held by this instance's members.",
        get(&room.nicknames),
    );
    out.one(
        "threadchat_seats",
        "gauge",
        "Clients held: connections, handshakes under way and waiting sessions.",
        shared.connections.load(Ordering::Relaxed) as u64,
    );
    out.one(
        "threadchat_seats_max",
        "gauge",
        "The most clients held at once (--max-clients).",
        shared.max_clients as u64,
    );
    out.one(
        "threadchat_joins_total",
        "counter",
        "Clients that joined the room.",
        get(&room.joins),
    );
    out.family(
        "threadchat_leaves_total",
        "counter",
        "Members that left, by how: a close or an end by the server, a connection lost \
         without a close, a close with 1001 going away (a session's drop counts here too); and \
         sessions whose window then ended without their client, when their leave is announced.",
    );
    for (cause, counter) in DEPARTURES.iter().zip(&room.leaves) {
        out.sample("threadchat_leaves_total", &[("cause", cause)], get(counter));
    }
    let ended = get(&room.windows_ended);
    out.sample(
        "threadchat_leaves_total",
        &[("cause", "window_ended")],
        ended,
    );
    out.one(
        "threadchat_lines_total",
        "counter",
        "Lines appended to the room's log: joins, lines and leaves.",
        get(&room.lines),
    );
    out.one(
        "threadchat_appended_bytes_total",
        "counter",
        "Bytes of frames appended to the plain log.",
        get(&room.bytes_appended),
    );
    let age = figures::since_start_ms().saturating_sub(get(&room.alive_ms));
    out.family(
        "threadchat_room_silence_seconds",
        "gauge",
        "Since the room thread last went round its loop (it does every second).",
    );
    out.float("threadchat_room_silence_seconds", &[], age as f64 / 1000.0);

    let writers: Vec<(String, &crate::figures::WriterFigures)> = shared
        .writers
        .iter()
        .enumerate()
        .map(|(i, w)| (i.to_string(), &w.figures))
        .collect();
    out.family(
        "threadchat_sends_total",
        "counter",
        "sendmsg calls to clients, by writer thread.",
    );
    for (i, w) in &writers {
        out.sample("threadchat_sends_total", &[("writer", i)], get(&w.sends));
    }
    out.family(
        "threadchat_sent_bytes_total",
        "counter",
        "Bytes the kernel took for clients, by writer thread.",
    );
    for (i, w) in &writers {
        out.sample(
            "threadchat_sent_bytes_total",
            &[("writer", i)],
            get(&w.bytes),
        );
    }
    out.family(
        "threadchat_writer_busy_seconds_total",
        "counter",
        "Time each writer thread spent in its passes (its busy share is the rate).",
    );
    for (i, w) in &writers {
        let busy = get(&w.busy_us) as f64 / 1e6;
        out.float(
            "threadchat_writer_busy_seconds_total",
            &[("writer", i)],
            busy,
        );
    }
    delivery_delay(&mut out, &writers);
    out.family(
        "threadchat_writer_clients",
        "gauge",
        "Clients each writer thread sends to.",
    );
    for (i, w) in &writers {
        out.sample(
            "threadchat_writer_clients",
            &[("writer", i)],
            get(&w.clients),
        );
    }

    out.family(
        "threadchat_writer_blocked_clients",
        "gauge",
        "Clients whose socket is full, waiting for room, by writer thread.",
    );
    for (i, w) in &writers {
        out.sample(
            "threadchat_writer_blocked_clients",
            &[("writer", i)],
            get(&w.blocked),
        );
    }
    out.family(
        "threadchat_writer_furthest_lag_bytes",
        "gauge",
        "How far behind the log's head each writer's furthest client was in its last pass.",
    );
    for (i, w) in &writers {
        let lag = get(&w.furthest_lag);
        out.sample(
            "threadchat_writer_furthest_lag_bytes",
            &[("writer", i)],
            lag,
        );
    }
    out.family(
        "threadchat_writer_gathering",
        "gauge",
        "1 while a writer thread rests after its passes so lines gather, 0 while it sends at once.",
    );
    for (i, w) in &writers {
        out.sample(
            "threadchat_writer_gathering",
            &[("writer", i)],
            get(&w.gathering),
        );
    }
    out.family(
        "threadchat_connections_ended_total",
        "counter",
        "WebSocket connections that ended, by cause.",
    );
    for (i, cause) in ENDINGS.iter().enumerate() {
        let by_writers: u64 = writers
            .iter()
            .map(|(_, w)| match *cause {
                "too_slow" => get(&w.too_slow),
                "lost" => get(&w.lost),
                "write_timeout" => get(&w.write_timeouts),
                _ => 0,
            })
            .sum();
        let value = get(&figures.endings[i]) + by_writers;
        out.sample(
            "threadchat_connections_ended_total",
            &[("cause", cause)],
            value,
        );
    }
    out.family(
        "threadchat_lines_refused_total",
        "counter",
        "Lines a client sent that nobody heard, by why; the sender alone was told.",
    );
    for (why, counter) in REFUSED_LINES.iter().zip(&figures.refused_lines) {
        out.sample(
            "threadchat_lines_refused_total",
            &[("why", why)],
            get(counter),
        );
    }
    out.family(
        "threadchat_page_answers_total",
        "counter",
        "Requests the page port answered, by status.",
    );
    let statuses = PAGE_STATUSES
        .iter()
        .map(u16::to_string)
        .chain(["other".to_owned()]);
    for (status, counter) in statuses.zip(&figures.page_answers) {
        out.sample(
            "threadchat_page_answers_total",
            &[("status", &status)],
            get(counter),
        );
    }
    out.family(
        "threadchat_handshakes_refused_total",
        "counter",
        "WebSocket handshakes answered with an HTTP error, by status.",
    );
    for (status, counter) in REFUSAL_STATUSES.iter().zip(&figures.handshakes_refused) {
        let status = status.to_string();
        out.sample(
            "threadchat_handshakes_refused_total",
            &[("status", &status)],
            get(counter),
        );
    }
    out.family(
        "threadchat_page_refused_total",
        "counter",
        "Page connections refused before their request was read, by status.",
    );
    for (status, counter) in ["429", "503"].iter().zip(&figures.page_refused) {
        out.sample(
            "threadchat_page_refused_total",
            &[("status", status)],
            get(counter),
        );
    }
    out.one(
        "threadchat_admin_refused_total",
        "counter",
        "Admin connections refused at once (503): every place held by a connection being answered.",
        admin_refused,
    );
    out.family(
        "threadchat_resumes_total",
        "counter",
        "Resumes of a session, by how they ended.",
    );
    for (how, counter) in RESUMES.iter().zip(&figures.resumes) {
        out.sample("threadchat_resumes_total", &[("how", how)], get(counter));
    }
    if let Some(up) = figures::redis_up() {
        cluster(&mut out, up);
    }
    process(&mut out);
    out.0
}

/// The delivery delay, every writer's histogram summed.
fn delivery_delay(out: &mut Exposition, writers: &[(String, &crate::figures::WriterFigures)]) {
    let all: Vec<&SharedHistogram> = writers.iter().map(|(_, w)| &w.delay).collect();
    histogram(
        out,
        "threadchat_delivery_delay_seconds",
        "From a frame's append to the log to its bytes handed to the kernel, for each client.",
        &all,
    );
}

/// A histogram, the sum of `parts`: buckets cumulative, as Prometheus reads them.
fn histogram(out: &mut Exposition, name: &str, help: &str, parts: &[&SharedHistogram]) {
    out.family(name, "histogram", help);
    let mut counts = [0u64; DELAY_BUCKETS.len() + 1];
    let mut sum_us = 0;
    for part in parts {
        for (total, count) in counts.iter_mut().zip(&part.counts) {
            *total += get(count);
        }
        sum_us += get(&part.sum_us);
    }
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (bound, count) in DELAY_BUCKETS.iter().zip(counts) {
        cumulative += count;
        out.sample(&bucket, &[("le", &bound.to_string())], cumulative);
    }
    cumulative += counts[DELAY_BUCKETS.len()];
    out.sample(&bucket, &[("le", "+Inf")], cumulative);
    out.float(&format!("{name}_sum"), &[], sum_us as f64 / 1e6);
    out.sample(&format!("{name}_count"), &[], cumulative);
}

/// With `--redis`: Redis's reach and what the cluster's threads count.
fn cluster(out: &mut Exposition, up: bool) {
    let cluster = &CLUSTER;
    out.one(
        "threadchat_redis_up",
        "gauge",
        "With --redis: 1 while every cluster thread reaches Redis, 0 otherwise.",
        u64::from(up),
    );
    out.one(
        "threadchat_publisher_queue",
        "gauge",
        "Items waiting for the publisher to send them to Redis.",
        get(&cluster.queue),
    );
    histogram(
        out,
        "threadchat_redis_round_trip_seconds",
        "The publisher's round trips to Redis, each carrying every item waiting.",
        &[&cluster.round_trips],
    );
    out.one(
        "threadchat_gaps_total",
        "counter",
        "Times lines of the shared order were lost before this instance read them.",
        get(&cluster.gaps),
    );
    out.one(
        "threadchat_fenced_total",
        "counter",
        "Times the other instances took this one for dead and fenced it.",
        get(&cluster.fenced),
    );
    out.one(
        "threadchat_reaped_clients_total",
        "counter",
        "Clients of dead instances this instance announced as left.",
        get(&cluster.reaped),
    );
}

/// The process figures under the names every exporter uses.
fn process(out: &mut Exposition) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are the 14th and 15th fields, the 12th and 13th after the command.
    let cpu = (ticks(11) + ticks(12)) / per_second;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    out.family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    );
    out.float("process_cpu_seconds_total", &[], cpu);
    out.one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        field("VmRSS:") * 1024,
    );
    out.one(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        open_fds,
    );
    out.one(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        field("Threads:"),
    );
    out.family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    );
    out.float("process_start_time_seconds", &[], figures::start().1);
}

/// The text being built; writing into a String cannot fail.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.labels(name, labels);
        let _ = writeln!(self.0, " {value}");
    }

    fn float(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.labels(name, labels);
        let _ = writeln!(self.0, " {value}");
    }

    fn labels(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.0.push_str(name);
        if labels.is_empty() {
            return;
        }
        let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let _ = write!(self.0, "{{{}}}", pairs.join(","));
    }
}
