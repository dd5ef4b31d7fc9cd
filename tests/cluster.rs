//! Several instances sharing one room through a real redis-server (Debian's), which each
//! test starts on a free port with no persistence. Built only with the `redis` feature;
//! `make test` runs it. Without redis-server it is skipped loudly, except under CI=true.
#![cfg(feature = "redis")]

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How long survivors may take to notice a dead instance: the heartbeat's time to live plus
/// one scan, with room to spare.
const NOTICE_DEATH: Duration = Duration::from_secs(30);

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// A fresh redis-server, or None (with a loud warning) where there is none and this is
    /// not CI.
    fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("CI").is_err(),
                "redis-server is missing; make test installs it"
            );
            eprintln!("WARNING: redis-server not found; the cluster tests are SKIPPED");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis { child, port };
        eventually("redis-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("a connection to redis")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn instance(redis: &Redis) -> Server {
    let server = Server::start(&["--rate-limit", "0", "--redis", &redis.url()]);
    assert!(
        server.startup[0].starts_with("threadchat: room shared through redis://"),
        "{:?}",
        server.startup
    );
    server
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
    assert_eq!(a.line(), format!(" .... {gone} has left."));
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
fn a_killed_instance_clients_are_announced_as_left_exactly_once() {
    let Some(redis) = Redis::start() else { return };
    let doomed = instance(&redis);
    let (two, three) = (instance(&redis), instance(&redis));
    let mut watchers = vec![two.join(), three.join()];
    let victims: Vec<Client> = (0..2).map(|_| doomed.join()).collect();
    settle(&mut watchers);
    // SAFETY: kill(2) on a child of ours.
    unsafe { libc::kill(doomed.pid() as i32, libc::SIGKILL) };

    // The reaping script announces and forgets the dead instance in one atomic step, so once
    // it is gone from the list of instances no one can announce its clients again.
    let mut redis_connection = redis.connection();
    let deadline = Instant::now() + NOTICE_DEATH;
    loop {
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg("threadchat:instances")
            .query(&mut redis_connection)
            .unwrap();
        if instances.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead instance was never noticed"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let marker = format!("{}: settled", watchers[0].nickname);
    watchers[0].say("settled");
    for watcher in &mut watchers {
        let heard = watcher.until(&marker);
        let mut leaves: HashMap<&str, usize> = HashMap::new();
        for line in &heard {
            for victim in &victims {
                if *line == format!(" .... {} has left.", victim.nickname) {
                    *leaves.entry(victim.nickname.as_str()).or_default() += 1;
                }
            }
        }
        for victim in &victims {
            assert_eq!(leaves.get(victim.nickname.as_str()), Some(&1), "{heard:?}");
        }
    }
    // Their names are free again.
    let held: Vec<String> = redis::cmd("HKEYS")
        .arg("threadchat:nicknames")
        .query(&mut redis_connection)
        .unwrap();
    assert!(
        victims.iter().all(|v| !held.contains(&v.nickname)),
        "{held:?}"
    );
}

#[test]
fn while_redis_is_stopped_each_line_is_delivered_to_all_or_refused_aloud() {
    const DURING: usize = 30;
    const STOPPED: Duration = Duration::from_secs(3);
    let not_sent = " .... not sent: the room is unreachable";
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (instance(&redis), instance(&redis));
    let mut clients = vec![one.join(), two.join()];
    settle(&mut clients);
    let mut b = clients.pop().expect("two clients");
    let mut a = clients.pop().expect("two clients");

    redis.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    // A line every 100 ms while Redis is stopped: the outage is what is being tested.
    for i in 0..DURING {
        a.say(&format!("during {i}"));
        thread::sleep(STOPPED / DURING as u32);
    }
    thread::sleep(STOPPED.saturating_sub(stopped.elapsed()));
    redis.signal(libc::SIGCONT);

    // Once Redis is back, a line gets through again. b probes, so that every notice a
    // hears is for one of its own lines.
    let during = format!("{}: during ", a.nickname);
    let during_line = |line: &str| line.strip_prefix(&during).map(str::to_owned);
    let mut delivered_to_b = Vec::new();
    let deadline = Instant::now() + 3 * PATIENCE;
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
            } else if line == not_sent {
                break;
            } else if let Some(i) = during_line(&line) {
                delivered_to_b.push(i);
            }
        }
    };
    let heard_by_a = a.until(&back);
    let refused_during = heard_by_a.iter().filter(|l| *l == not_sent).count();
    let delivered_to_a: Vec<String> = heard_by_a.iter().filter_map(|l| during_line(l)).collect();
    assert_eq!(
        delivered_to_a, delivered_to_b,
        "both instances saw the same lines"
    );
    assert!(
        delivered_to_a.len() + refused_during >= DURING,
        "{} delivered and {refused_during} refused of {DURING}: some were lost silently",
        delivered_to_a.len()
    );
    assert!(
        refused_during > 0,
        "Redis was stopped, yet nothing was refused"
    );
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
