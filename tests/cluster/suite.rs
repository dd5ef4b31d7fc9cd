//! The suite itself: compiled only with the `redis` feature, from `../cluster.rs`.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::redis_server::{instance_id, instance_with, Redis};
use crate::common::*;

/// README: a dead instance's clients are announced as left "within 13 s".
const PROMISED_NOTICE: Duration = Duration::from_secs(13);
/// README: "each reconnection attempt holds the room for up to a second".
const PROMISED_ATTEMPT: Duration = Duration::from_secs(1);
/// README: "reconnects with backoff (0.1 to 4 s)".
const PROMISED_MOST_BACKOFF: Duration = Duration::from_secs(4);
/// What a loaded two-core CI machine may add to a promised time: scheduling delays for two
/// or three instances, redis-server and the test, and the poll that notices.
const MARGIN: Duration = Duration::from_secs(1);
/// How long to go on listening after a leave for a second one: the publisher sends a leave
/// it owes again with its next batch, and the heartbeat looks for the dead every 3 s, so a
/// leave paid twice, or a dead instance reaped twice, would show up well within this.
const RETRY_OWED_EVERY: Duration = Duration::from_secs(1);

const NOT_SENT: &str = " .... not sent: the room is unreachable";

/// A TCP proxy between one instance and redis-server that the test can cut, as when the
/// network between them fails while Redis and the other instances carry on. Cut, it closes
/// every connection it carries and every new one at once.
struct Proxy {
    port: u16,
    /// The connections it carries (both ends), and whether it is cut; one lock for both,
    /// so that no connection slips through a cut.
    state: Arc<Mutex<(Vec<TcpStream>, bool)>>,
    /// What becomes of what Redis answers (a `Replies` as a number).
    replies: Arc<AtomicU8>,
}

/// What a proxy does with Redis's replies; requests always go through.
#[derive(Clone, Copy)]
enum Replies {
    Pass,
    /// Dropped: a reply lost on the way.
    Lost,
    /// Kept back until they pass again: a Redis that answers late.
    Held,
}

impl Proxy {
    fn start(to: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new((Vec::new(), false)));
        let shared = state.clone();
        let replies = Arc::new(AtomicU8::new(Replies::Pass as u8));
        let answers = replies.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut state = shared.lock().unwrap();
                if state.1 {
                    continue; // cut: closed as soon as it is open
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                state.0.push(client.try_clone().unwrap());
                state.0.push(server.try_clone().unwrap());
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    None,
                );
                pipe(server, client, Some(answers.clone()));
            }
        });
        Proxy {
            port,
            state,
            replies,
        }
    }

    fn replies(&self, what: Replies) {
        self.replies.store(what as u8, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.1 = true;
        for socket in state.0.drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.state.lock().unwrap().1 = false;
    }
}

/// Copies `from` to `to` until either ends; `replies`, if given, says what to do with what
/// comes (see `Replies`).
fn pipe(mut from: TcpStream, mut to: TcpStream, replies: Option<Arc<AtomicU8>>) {
    let what = move || match replies.as_ref().map(|r| r.load(Ordering::SeqCst)) {
        Some(r) if r == Replies::Lost as u8 => Replies::Lost,
        Some(r) if r == Replies::Held as u8 => Replies::Held,
        _ => Replies::Pass,
    };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            while matches!(what(), Replies::Held) {
                thread::sleep(Duration::from_millis(1));
            }
            if matches!(what(), Replies::Lost) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

fn instance(redis: &Redis) -> Server {
    instance_with(&redis.url(), &[])
}

fn leave_of(name: &str) -> String {
    format!(" .... {name} has left.")
}

/// The names Redis holds, and the instance holding each (a name's value is
/// `instance:client`).
fn held_names(redis: &mut redis::Connection) -> HashMap<String, String> {
    let held: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("threadchat:nicknames")
        .query(redis)
        .unwrap();
    held.into_iter()
        .map(|(name, holder)| {
            let instance = holder.split(':').next().unwrap_or_default().to_owned();
            (name, instance)
        })
        .collect()
}

#[test]
fn clients_on_different_instances_share_joins_lines_and_leaves() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (instance(&redis), instance(&redis));
    let mut a = one.join();
    let mut b = two.join();
    assert_eq!(a.line(), format!(" .... {} has joined.", b.nickname));
    a.say("hello from one");
    let from_a = format!("{}: hello from one", a.nickname);
    assert_eq!(a.line(), from_a);
    assert_eq!(b.line(), from_a);
    b.say("hello from two");
    let from_b = format!("{}: hello from two", b.nickname);
    assert_eq!(b.line(), from_b);
    assert_eq!(a.line(), from_b);
    let gone = b.nickname.clone();
    drop(b);
    assert_eq!(a.line(), leave_of(&gone));
}

#[test]
fn three_instances_three_senders_one_transcript() {
    const LINES_EACH: usize = 100;
    let Some(redis) = Redis::start() else { return };
    let servers: Vec<Server> = (0..3).map(|_| instance(&redis)).collect();
    let mut clients: Vec<Client> = servers.iter().map(|s| s.join()).collect();
    settle(&mut clients);
    let names: Vec<String> = clients.iter().map(|c| c.nickname.clone()).collect();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            thread::spawn(move || {
                for i in 0..LINES_EACH {
                    client.say(&format!("line {i}"));
                }
                // Every client reads every sender's lines, its own included.
                let mut transcript = Vec::new();
                while transcript.len() < 3 * LINES_EACH {
                    let line = client.line();
                    if line.contains(": line ") {
                        transcript.push(line);
                    }
                }
                transcript
            })
        })
        .collect();
    let transcripts: Vec<Vec<String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        transcripts.iter().all(|t| *t == transcripts[0]),
        "transcripts differ"
    );
    for name in &names {
        let mine: Vec<&String> = transcripts[0]
            .iter()
            .filter(|l| l.starts_with(&format!("{name}: ")))
            .collect();
        let expected: Vec<String> = (0..LINES_EACH)
            .map(|i| format!("{name}: line {i}"))
            .collect();
        assert_eq!(
            mine,
            expected.iter().collect::<Vec<_>>(),
            "{name}'s lines out of order"
        );
    }
}

#[test]
fn nicknames_are_unique_across_instances_and_freed_on_leave() {
    const EACH: usize = 10;
    let Some(redis) = Redis::start() else { return };
    let mut connection = redis.connection();
    // Another instance holds four names in five: only user-N with N a multiple of 5 is
    // free. A room that did not ask Redis would hand out a held name four times in five.
    // (With 100 draws before a newcomer is turned away, a free name is missed 0.8^100 of
    // the time: never.)
    for chunk in (0..100_000u32)
        .filter(|n| n % 5 != 0)
        .collect::<Vec<_>>()
        .chunks(10_000)
    {
        let mut hset = redis::cmd("HSET");
        hset.arg("threadchat:nicknames");
        for n in chunk {
            hset.arg(format!("user-{n}")).arg("someone-else");
        }
        hset.query::<()>(&mut connection).unwrap();
    }
    let (one, two) = (instance(&redis), instance(&redis));
    let mut clients: Vec<(Client, String)> = Vec::new();
    for server in [&one, &two] {
        for _ in 0..EACH {
            clients.push((server.join(), instance_id(server)));
        }
    }
    let held = held_names(&mut connection);
    let mut seen = HashSet::new();
    for (client, instance) in &clients {
        let name = &client.nickname;
        let n: u32 = name["user-".len()..].parse().unwrap();
        assert_eq!(n % 5, 0, "{name} was held by another instance");
        assert!(seen.insert(name.clone()), "{name} given twice");
        assert_eq!(
            held.get(name),
            Some(instance),
            "{name} is not held for its instance"
        );
    }
    // Half of them leave, from both instances: their names are free again, the others' not.
    let (gone, stay): (Vec<_>, Vec<_>) = clients
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let gone: Vec<String> = gone.into_iter().map(|(_, (c, _))| c.nickname).collect();
    eventually("the leavers' names to be free", || {
        let held = held_names(&mut connection);
        gone.iter().all(|name| !held.contains_key(name))
    });
    let held = held_names(&mut connection);
    for (_, (client, instance)) in &stay {
        assert_eq!(held.get(&client.nickname), Some(instance));
    }
    assert_eq!(held.len(), 80_000 + stay.len(), "names held for nobody");
}

#[test]
fn a_killed_instance_clients_are_announced_as_left_exactly_once_within_13_s() {
    let Some(redis) = Redis::start() else { return };
    let doomed = instance(&redis);
    let (two, three) = (instance(&redis), instance(&redis));
    let dead_id = instance_id(&doomed);
    let mut watchers = vec![two.join(), three.join()];
    let victims: Vec<Client> = (0..2).map(|_| doomed.join()).collect();
    settle(&mut watchers);
    // SAFETY: kill(2) on a child of ours.
    unsafe { libc::kill(doomed.pid() as i32, libc::SIGKILL) };
    let killed = Instant::now();

    // Each watcher hears each victim leave within the promised time.
    let deadline = killed + PROMISED_NOTICE + MARGIN;
    let mut heard: Vec<Vec<String>> = vec![Vec::new(); watchers.len()];
    for (watcher, heard) in watchers.iter_mut().zip(&mut heard) {
        while !victims
            .iter()
            .all(|v| heard.contains(&leave_of(&v.nickname)))
        {
            let line = line_by(watcher, deadline).unwrap_or_else(|| {
                panic!("no leave within {PROMISED_NOTICE:?} + {MARGIN:?}: heard {heard:?}")
            });
            heard.push(line);
        }
    }

    // Exactly once: the script that announced them forgot the dead instance in the same
    // atomic step, so a survivor that scans again finds nothing to announce. Wait until it
    // is forgotten and every survivor has scanned twice since (its heartbeat is renewed
    // before each scan), then mark the end of the transcript.
    let mut connection = redis.connection();
    eventually("the dead instance to be forgotten", || {
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg("threadchat:instances")
            .query(&mut connection)
            .unwrap();
        !instances.contains(&dead_id)
    });
    for survivor in [instance_id(&two), instance_id(&three)] {
        let key = format!("threadchat:alive:{survivor}");
        let ttl =
            |c: &mut redis::Connection| -> i64 { redis::cmd("PTTL").arg(&key).query(c).unwrap() };
        let (mut last, mut renewals) = (ttl(&mut connection), 0);
        let deadline = Instant::now() + 3 * PROMISED_NOTICE;
        while renewals < 2 {
            assert!(
                Instant::now() < deadline,
                "{survivor} stopped renewing its heartbeat"
            );
            thread::sleep(Duration::from_millis(50));
            let now = ttl(&mut connection);
            renewals += usize::from(now > last);
            last = now;
        }
    }
    let marker = format!("{}: settled", watchers[0].nickname);
    watchers[0].say("settled");
    for (watcher, heard) in watchers.iter_mut().zip(&mut heard) {
        heard.extend(watcher.until(&marker));
        for victim in &victims {
            let leaves = heard.iter().filter(|l| **l == leave_of(&victim.nickname));
            assert_eq!(leaves.count(), 1, "{heard:?}");
        }
    }
    // One survivor did it, and said so once.
    let said = format!("instance {dead_id} is gone; announced its 2 client(s) as left");
    let saying: usize = [&two, &three]
        .iter()
        .map(|s| s.stderr().lines().filter(|l| l.ends_with(&said)).count())
        .sum();
    assert_eq!(saying, 1, "survivors logging {said:?}");
    // Their names are free again.
    let held = held_names(&mut connection);
    assert!(
        victims.iter().all(|v| !held.contains_key(&v.nickname)),
        "{held:?}"
    );
    // The survivors still hold their own, in their own sets: the next reap finds them.
    for (survivor, watcher) in [&two, &three].into_iter().zip(&watchers) {
        let set = format!("threadchat:held:{}", instance_id(survivor));
        let kept: bool = redis::cmd("SISMEMBER")
            .arg(&set)
            .arg(&watcher.nickname)
            .query(&mut connection)
            .unwrap();
        assert!(kept, "{} is no longer in {set}", watcher.nickname);
    }
    // A restarted instance is a new one, with a new name, and joins the same room.
    let reborn = instance(&redis);
    assert_ne!(instance_id(&reborn), dead_id);
    let newcomer = reborn.join();
    let joined = format!(" .... {} has joined.", newcomer.nickname);
    for watcher in &mut watchers {
        assert_eq!(watcher.line(), joined);
    }
}

/// A raw client's own join line names it.
fn raw_nickname(raw: &mut RawClient) -> String {
    let line = raw.text();
    line.strip_prefix(" .... ")
        .and_then(|r| r.strip_suffix(" has joined."))
        .unwrap_or_else(|| panic!("first line was not our join: {line:?}"))
        .to_owned()
}

/// The N of each "{name}: {tag} N" line among `lines`.
fn numbered(lines: &[String], name: &str, tag: &str) -> Vec<usize> {
    let prefix = format!("{name}: {tag} ");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .collect()
}

/// The instance's publisher has logged that Redis went away.
fn publisher_gone(server: &Server) -> bool {
    server
        .stderr()
        .lines()
        .any(|l| l.starts_with("threadchat: publisher:") && l.ends_with("; retrying"))
}

/// The instance's publisher has logged that Redis is back. Until then a line is refused:
/// a client may be in already, its join or resume read back from the stream by the stream
/// thread, while the publisher still waits out its backoff.
fn publisher_back(server: &Server) -> bool {
    server
        .stderr()
        .lines()
        .any(|l| l.starts_with("threadchat: publisher:") && l.ends_with(" is back"))
}

/// How many times each of the instance's Redis connections (publisher, stream, heartbeat)
/// logged a line ending with `what`.
fn logged(server: &Server, what: &str) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for line in server.stderr().lines() {
        if let Some(rest) = line.strip_prefix("threadchat: ") {
            if rest.ends_with(what) {
                let who = rest.split(':').next().unwrap_or_default().to_owned();
                *count.entry(who).or_default() += 1;
            }
        }
    }
    count
}

/// One line when Redis goes away and one when it is back, per connection that noticed: not
/// one per failed attempt, nor one per call. The room's connection noticed both.
fn assert_logged_once(server: &Server) {
    let gone = logged(server, "; retrying");
    let back = logged(server, "is back");
    assert_eq!(gone.get("publisher"), Some(&1), "{gone:?}");
    assert_eq!(back.get("publisher"), Some(&1), "{back:?}");
    assert!(
        gone.values().chain(back.values()).all(|&n| n == 1),
        "{gone:?} {back:?}"
    );
    assert!(
        back.keys().all(|who| gone.contains_key(who)),
        "{gone:?} {back:?}"
    );
}

#[test]
fn while_redis_is_stopped_lines_are_refused_to_their_sender_alone_and_exactly() {
    const DURING: usize = 20;
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (instance(&redis), instance(&redis));
    // a sends; c, on the same instance, only listens; b is on the other instance.
    let mut a = RawClient::connect(one.ws);
    let a_name = raw_nickname(&mut a);
    let mut c = one.join();
    let mut b = two.join();
    assert_eq!(a.text(), format!(" .... {} has joined.", c.nickname));
    assert_eq!(a.text(), format!(" .... {} has joined.", b.nickname));
    assert_eq!(c.line(), format!(" .... {} has joined.", b.nickname));
    let mut a_says = RawClient {
        socket: a.socket.try_clone().unwrap(),
    };

    redis.signal(libc::SIGSTOP);
    // The first line waits for Redis and times out: whether Redis applied it is settled
    // once Redis answers again. Every later line, one at a time, is refused while Redis is
    // stopped: the first after that one timeout, the rest at once.
    a_says.send_frame(0x81, MASK, b"during 0");
    eventually("the instance to notice", || publisher_gone(&one));
    for i in 1..DURING {
        let sent = Instant::now();
        a_says.send_frame(0x81, MASK, format!("during {i}").as_bytes());
        assert_eq!(a.text(), NOT_SENT, "line {i} reached the room");
        let took = sent.elapsed();
        assert!(
            took <= PROMISED_ATTEMPT + MARGIN,
            "line {i} was refused {took:?} after it was sent"
        );
    }
    redis.signal(libc::SIGCONT);

    // Once Redis is back, a line gets through again. b probes: it is on the other instance.
    let mut heard_by_b = Vec::new();
    let deadline = Instant::now() + PROMISED_MOST_BACKOFF + PROMISED_ATTEMPT + MARGIN;
    let mut attempt = 0;
    let back = 'back: loop {
        assert!(Instant::now() < deadline, "the room never worked again");
        let probe = format!("{}: after {attempt}", b.nickname);
        b.say(&format!("after {attempt}"));
        attempt += 1;
        loop {
            let line = b.line();
            if line == probe {
                break 'back line;
            } else if line == NOT_SENT {
                break;
            }
            heard_by_b.push(line);
        }
        thread::sleep(Duration::from_millis(50)); // the next probe
    };
    // a's own instance takes lines again too, within the longest backoff, and settles the
    // first line before it sends anything new: a notice for it comes before the next line.
    let resumed = Instant::now();
    eventually("a's instance to reach redis again", || {
        one.stderr()
            .lines()
            .any(|l| l.starts_with("threadchat: publisher:") && l.ends_with("is back"))
    });
    assert!(resumed.elapsed() < PROMISED_MOST_BACKOFF + PROMISED_ATTEMPT + MARGIN);
    a_says.send_frame(0x81, MASK, b"again");
    let again = format!("{a_name}: again");
    let mut heard_by_a = Vec::new();
    loop {
        match a.text() {
            line if line == again => break,
            line => heard_by_a.push(line),
        }
    }
    let mut heard_by_c = c.until(&back);
    heard_by_c.extend(c.until(&again));
    heard_by_b.extend(b.until(&again));
    assert!(
        !heard_by_c.contains(&NOT_SENT.to_owned()),
        "c was told of a's refused lines: {heard_by_c:?}"
    );
    assert!(
        !heard_by_b.contains(&NOT_SENT.to_owned()),
        "b was told of a's refused lines: {heard_by_b:?}"
    );
    // The first line was either applied before Redis stopped (then everyone got it, once)
    // or never (then a alone heard it was not sent): exactly one of the two.
    let delivered = numbered(&heard_by_b, &a_name, "during");
    assert!(delivered == [0] || delivered.is_empty(), "{delivered:?}");
    assert_eq!(numbered(&heard_by_a, &a_name, "during"), delivered);
    assert_eq!(numbered(&heard_by_c, &a_name, "during"), delivered);
    let refused_after = heard_by_a.iter().filter(|l| *l == NOT_SENT).count();
    assert_eq!(
        delivered.len() + refused_after,
        1,
        "the first line was delivered and also refused, or neither: {heard_by_a:?}"
    );
    assert_logged_once(&one);
}

#[test]
fn cut_off_from_redis_an_instance_refuses_aloud_then_misses_nothing_and_pays_its_leaves() {
    const DURING: usize = 10;
    const MEANWHILE: usize = 10;
    let Some(redis) = Redis::start() else { return };
    let proxy = Proxy::start(redis.port);
    let one = instance_with(&proxy.url(), &[]);
    let two = instance(&redis);
    // a, c and d on the instance that will be cut off; b on the other.
    let mut clients = vec![one.join(), one.join(), one.join(), two.join()];
    settle(&mut clients);
    let mut b = clients.pop().expect("four clients");
    let d = clients.pop().expect("four clients");
    let mut c = clients.pop().expect("four clients");
    let mut a = clients.pop().expect("four clients");

    proxy.cut();
    // The first line meets the cut: whether it reached Redis is settled once the instance
    // is back. Each later one is refused at once, to a alone.
    a.say("during 0");
    eventually("the instance to notice", || publisher_gone(&one));
    for i in 1..DURING {
        let sent = Instant::now();
        a.say(&format!("during {i}"));
        assert_eq!(a.line(), NOT_SENT, "during {i}");
        let took = sent.elapsed();
        assert!(
            took <= PROMISED_ATTEMPT + MARGIN,
            "line {i} was refused {took:?} after it was sent"
        );
    }
    // A newcomer is told to try again later, at once.
    let asked = Instant::now();
    let mut newcomer = handshake(&one.ws_url("/"), &[]).expect("the upgrade itself works");
    assert_eq!(expect_close(&mut newcomer).0, 1013);
    assert!(
        asked.elapsed() <= MARGIN,
        "told to come back {:?} after it asked",
        asked.elapsed()
    );
    // d leaves while its instance cannot tell anyone.
    let d_name = d.nickname.clone();
    drop(d);
    eventually("d's leave to reach its room", || {
        one.stderr().contains(&format!("leave {d_name} from"))
    });
    // The room goes on without the cut-off instance.
    for i in 0..MEANWHILE {
        b.say(&format!("meanwhile {i}"));
    }
    for i in 0..MEANWHILE {
        assert_eq!(b.line(), format!("{}: meanwhile {i}", b.nickname));
    }

    proxy.restore();
    let restored = Instant::now();
    // a's lines get through again once the instance's connection is back: within the
    // longest backoff. It settles the first line before anything new: it never reached
    // Redis, so a hears it was not sent, and then its next line goes through.
    eventually("a's instance to reach redis again", || {
        one.stderr()
            .lines()
            .any(|l| l.starts_with("threadchat: publisher:") && l.ends_with("is back"))
    });
    assert!(
        restored.elapsed() < PROMISED_MOST_BACKOFF + PROMISED_ATTEMPT + MARGIN,
        "back only {:?} after Redis was reachable again",
        restored.elapsed()
    );
    a.say("after");
    let back = format!("{}: after", a.nickname);
    let heard_by_a = a.until(&back);
    assert_eq!(
        heard_by_a.iter().filter(|l| *l == NOT_SENT).count(),
        1,
        "the line in doubt is settled as not sent: {heard_by_a:?}"
    );
    let mut heard = vec![heard_by_a, c.until(&back), b.until(&back)];
    // d's leave may be paid just after a's line got through: at the next retry.
    let d_left = leave_of(&d_name);
    for (client, heard) in [&mut a, &mut c, &mut b].into_iter().zip(&mut heard) {
        while !heard.contains(&d_left) {
            heard.push(client.line());
        }
        // Paid once: a second payment would come at a later retry.
        heard.extend(lines_for(client, 2 * RETRY_OWED_EVERY + MARGIN));
    }
    let b_name = b.nickname.clone();
    for (who, heard) in ["a", "c", "b"].into_iter().zip(&heard) {
        assert_eq!(
            heard.iter().filter(|l| **l == d_left).count(),
            1,
            "{who} heard d's leave other than once: {heard:?}"
        );
        assert!(
            numbered(heard, &a.nickname, "during").is_empty(),
            "{who} heard a refused line: {heard:?}"
        );
        assert!(
            !heard.contains(&NOT_SENT.to_owned()) || who == "a",
            "{who}: {heard:?}"
        );
        if who != "b" {
            // Resumed from the last entry it read: everything b said meanwhile, once, in order.
            assert_eq!(
                numbered(heard, &b_name, "meanwhile"),
                (0..MEANWHILE).collect::<Vec<_>>(),
                "{who}"
            );
        }
    }
    // Redis holds exactly the names of those still connected: d's was freed, and the
    // newcomer turned away holds none.
    let held: HashSet<String> = held_names(&mut redis.connection()).into_keys().collect();
    let connected: HashSet<String> = [&a, &b, &c].iter().map(|x| x.nickname.clone()).collect();
    assert_eq!(held, connected);
    assert_logged_once(&one);
}

#[test]
fn the_stream_is_trimmed_to_about_redis_max_entries() {
    const MAX_ENTRIES: u64 = 100;
    /// XADD MAXLEN ~ trims whole nodes of the stream, of up to 100 entries each
    /// (redis-server's stream-node-max-entries): "about" means less than one node over.
    const NODE: u64 = 100;
    let Some(redis) = Redis::start() else { return };
    let server = instance_with(
        &redis.url(),
        &["--redis-max-entries", &MAX_ENTRIES.to_string()],
    );
    let mut a = server.join();
    for i in 0..1000 {
        a.say(&format!("line {i}"));
    }
    a.until(&format!("{}: line 999", a.nickname));
    let length: u64 = redis::cmd("XLEN")
        .arg("threadchat:room")
        .query(&mut redis.connection())
        .unwrap();
    assert!(
        (MAX_ENTRIES..MAX_ENTRIES + NODE).contains(&length),
        "the stream holds {length} entries"
    );
}

#[test]
fn trace_shows_each_xadd_and_xread_with_their_ids() {
    let Some(redis) = Redis::start() else { return };
    let server = instance_with(&redis.url(), &["--trace"]);
    let mut a = server.join();
    a.say("traced");
    assert_eq!(a.line(), format!("{}: traced", a.nickname));
    let line = format!("{:?}", format!("{}: traced", a.nickname));
    let mut id = None;
    eventually("the XADD in the trace", || {
        id = server.stderr().lines().find_map(|l| {
            let rest = l.strip_prefix("stream | XADD threadchat:room -> ")?;
            let (id, added) = rest.split_once(": ")?;
            (added == line).then(|| id.to_owned())
        });
        id.is_some()
    });
    let id = id.unwrap();
    assert!(
        id.split_once('-')
            .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok()),
        "{id}"
    );
    eventually("the XREAD that read it back, in the trace", || {
        server.stderr().lines().any(|l| {
            l.starts_with("stream | XREAD threadchat:room after ")
                && l.ends_with(&format!("up to {id}"))
        })
    });
}

#[test]
fn an_instance_paused_for_less_than_the_heartbeat_ttl_keeps_its_clients() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (instance(&redis), instance(&redis));
    let mut a = one.join();
    let mut b = two.join();
    assert_eq!(a.line(), format!(" .... {} has joined.", b.nickname));
    for secs in [0.3, 1.0, 3.0] {
        pause_process(one.pid(), Duration::from_secs_f64(secs));
        // Nobody left: the next line anyone reads is this one, on both instances.
        let line = format!("after {secs} s");
        a.say(&line);
        let from_a = format!("{}: {line}", a.nickname);
        assert_eq!(a.line(), from_a, "after a pause of {secs} s");
        assert_eq!(b.line(), from_a, "after a pause of {secs} s");
    }
}

#[test]
fn a_join_whose_reply_was_lost_is_settled_once_redis_is_heard_again() {
    let Some(redis) = Redis::start() else { return };
    let proxy = Proxy::start(redis.port);
    let one = instance_with(&proxy.url(), &[]);
    let two = instance(&redis);
    let mut witness = two.join();
    // A newcomer's join reaches Redis, which places it; the answer is lost on the way back.
    proxy.replies(Replies::Lost);
    let mut newcomer = handshake(&one.ws_url("/"), &[]).expect("the upgrade itself works");
    let joined = witness.line();
    let name = joined
        .strip_prefix(" .... ")
        .and_then(|rest| rest.strip_suffix(" has joined."))
        .unwrap_or_else(|| panic!("expected the newcomer's join, got {joined:?}"))
        .to_owned();
    eventually("the instance to give up on the answer", || {
        publisher_gone(&one)
    });
    proxy.replies(Replies::Pass);
    // Settled once Redis is heard again: it was placed, so the newcomer is in, under the
    // name everyone saw join, and nobody hears it twice or leave.
    assert_eq!(read_text(&mut newcomer), joined);
    eventually("the publisher to be back", || publisher_back(&one));
    newcomer
        .send(tungstenite::Message::text("in after all"))
        .unwrap();
    let said = format!("{name}: in after all");
    assert_eq!(witness.until(&said), Vec::<String>::new());
}

/// README: a leave is appended only if the instance still held the name, so no leave is ever
/// announced twice. Here Redis takes the leave and its answer is lost: the instance owes it
/// and asks again once Redis is heard again, and the second time Redis must say the name is
/// gone rather than announce it once more.
#[test]
fn a_leave_whose_reply_was_lost_is_announced_once_redis_is_heard_again() {
    let Some(redis) = Redis::start() else { return };
    let proxy = Proxy::start(redis.port);
    let one = instance_with(&proxy.url(), &[]);
    let two = instance(&redis);
    let mut witness = two.join();
    let mut speaker = one.join();
    let leaver = one.join();
    let name = leaver.nickname.clone();
    witness.until(&format!(" .... {name} has joined."));
    // The leave reaches Redis, which announces it; its answer is lost on the way back.
    proxy.replies(Replies::Lost);
    drop(leaver);
    assert_eq!(witness.line(), leave_of(&name));
    eventually("the instance to give up on the answer", || {
        publisher_gone(&one)
    });
    proxy.replies(Replies::Pass);
    eventually("the publisher to be back", || publisher_back(&one));
    // The owed leave goes in the publisher's first round trip once it is back, ahead of
    // anything said after that; then a while more, as long as a leave owed is asked again.
    speaker.say("after");
    let mut heard = witness.until(&format!("{}: after", speaker.nickname));
    heard.extend(lines_for(&mut witness, RETRY_OWED_EVERY + MARGIN));
    let again = heard.iter().filter(|l| **l == leave_of(&name)).count();
    assert_eq!(again, 0, "the leave was announced again: {heard:?}");
}

#[test]
fn a_resume_whose_reply_was_lost_is_settled_once_redis_is_heard_again() {
    use crate::common::resumable::{Resumable, SUBPROTOCOL};
    let Some(redis) = Redis::start() else { return };
    let proxy = Proxy::start(redis.port);
    let one = instance_with(&proxy.url(), &[]);
    let two = instance(&redis);
    let mut witness = two.join();
    let page = Resumable::new_session(&two);
    assert_eq!(
        witness.line(),
        format!(" .... {} has joined.", page.nickname)
    );
    let (token, nickname, position) = page.cut();
    eventually("its session to wait", || {
        two.stderr().contains(&format!("drop  {nickname}"))
    });
    // It comes back on the instance whose answers from Redis are lost: Redis moves the
    // session there, and the instance does not hear that it did.
    proxy.replies(Replies::Lost);
    let mut ws = handshake(&one.ws_url("/"), &[SUBPROTOCOL]).expect("the upgrade itself works");
    ws.send(tungstenite::Message::text(format!(
        "resume {token} {position}"
    )))
    .unwrap();
    eventually("the instance to give up on the answer", || {
        publisher_gone(&one)
    });
    proxy.replies(Replies::Pass);
    // Settled once Redis is heard again: the session is its own, under its name.
    let first = read_text(&mut ws);
    assert!(first.starts_with("resumed "), "{first:?}");
    eventually("the publisher to be back", || publisher_back(&one));
    ws.send(tungstenite::Message::text("back")).unwrap();
    let said = format!("{nickname}: back");
    assert_eq!(witness.until(&said), Vec::<String>::new());
}

/// How much longer than the stop takes Redis answers in the test below: long enough for a
/// process that does not wait for its last leaves to be gone (it exits within about 10 ms
/// of its last client), short enough that the whole hold stays well within the second the
/// publisher waits for an answer.
const LATE: Duration = Duration::from_millis(100);

/// README: SIGTERM on an instance of a cluster announces its plain clients' leaves. The
/// instance places them itself on its way out, even while Redis answers late: it waits for
/// them (a second at most) instead of leaving them to the reaper, which would announce them
/// only once the heartbeat's time to live has run out.
#[test]
fn a_stopping_instance_places_its_last_leaves_even_while_redis_answers_late() {
    let Some(redis) = Redis::start() else { return };
    let proxy = Proxy::start(redis.port);
    let one = instance_with(&proxy.url(), &[]);
    let two = instance(&redis);
    let mut witness = two.join();
    let mut plain = one.join();
    let name = plain.nickname.clone();
    assert_eq!(witness.line(), format!(" .... {name} has joined."));
    // Redis places the line (the witness hears it); its answer is kept back a while.
    proxy.replies(Replies::Held);
    plain.say("last words");
    assert_eq!(witness.line(), format!("{name}: last words"));
    signal_process(one.pid(), "TERM");
    assert_eq!(plain.close_frame().0, 1012);
    drop(plain);
    thread::sleep(LATE);
    proxy.replies(Replies::Pass);
    assert_eq!(witness.line(), leave_of(&name));
    // Its own leave, not the reaper's: the reaper forgets the instance as it announces.
    let listed: bool = redis::cmd("SISMEMBER")
        .arg("threadchat:instances")
        .arg(instance_id(&one))
        .query(&mut redis.connection())
        .unwrap();
    assert!(
        listed,
        "the leave came from the reaper, not the stopping instance"
    );
}

/// README: an instance cut off from Redis longer than the heartbeat's time to live is taken
/// for dead and fenced. Once it reaches Redis again, its heartbeat hears so, and it closes its
/// clients with 1012, though none of them says a word.
#[test]
fn an_instance_cut_off_past_the_heartbeat_ttl_closes_its_quiet_clients_with_1012() {
    let Some(redis) = Redis::start() else { return };
    let proxy = Proxy::start(redis.port);
    let one = instance_with(&proxy.url(), &[]);
    let two = instance(&redis);
    let mut witness = two.join();
    let mut quiet = one.join();
    let left = leave_of(&quiet.nickname);
    assert_eq!(
        witness.line(),
        format!(" .... {} has joined.", quiet.nickname)
    );
    proxy.cut();
    let by = Instant::now() + PROMISED_NOTICE + MARGIN;
    assert_eq!(
        line_by(&mut witness, by),
        Some(left.clone()),
        "taken for dead"
    );
    proxy.restore();
    assert_eq!(quiet.close_frame(), (1012, "service restart".to_owned()));
    // Announced by the survivor only, once.
    assert!(!lines_for(&mut witness, 2 * RETRY_OWED_EVERY + MARGIN).contains(&left));
}

/// How long each thread of process `pid` has been running or ready to run (waiting for a
/// CPU) so far, from /proc/<pid>/task/<tid>/schedstat (proc(5)). A thread that polls in a
/// loop is always one or the other, however busy the machine is with other work; a thread
/// that waits is neither.
fn busy_times(pid: u32) -> HashMap<String, Duration> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let task = task.ok()?;
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let mut fields = stat.split_whitespace().map(str::parse::<u64>);
            let (Some(Ok(running)), Some(Ok(waiting))) = (fields.next(), fields.next()) else {
                return None;
            };
            let tid = task.file_name().to_string_lossy().into_owned();
            Some((tid, Duration::from_nanos(running + waiting)))
        })
        .collect()
}

#[test]
fn an_idle_instance_waits_instead_of_spinning() {
    let Some(redis) = Redis::start() else { return };
    let one = instance(&redis);
    let mut client = one.join();
    // One round trip done: nothing waits for Redis, nothing is in doubt.
    client.say("hello");
    assert_eq!(client.line(), format!("{}: hello", client.nickname));
    let (before, watched) = (busy_times(one.pid()), Instant::now());
    assert_eq!(
        lines_for(&mut client, Duration::from_secs(2)),
        Vec::<String>::new()
    );
    let (after, over) = (busy_times(one.pid()), watched.elapsed());
    let busy: Duration = after
        .iter()
        .map(|(tid, &t)| t.saturating_sub(before.get(tid).copied().unwrap_or_default()))
        .sum();
    // Its threads wake for the heartbeat and each blocking read of the stream: a few
    // milliseconds, and as long again waiting for a CPU on a loaded machine. One thread
    // polling in a loop is busy the whole time, whether it gets a CPU or waits for one.
    assert!(
        busy < over / 4,
        "busy {busy:?} in {over:?} with nothing to do"
    );
}

#[test]
fn a_line_sent_the_moment_the_upgrade_is_answered_is_delivered_never_lost_in_silence() {
    // The line reaches the room a Redis round trip before the client's join is placed.
    let Some(redis) = Redis::start() else { return };
    let server = instance(&redis);
    for i in 0..30 {
        let said = say_at_once(&server.ws_url("/"), &format!("at once {i}"));
        assert!(said.is_ok(), "line {i}: {said:?}");
    }
}
