//! The cluster under the faults real Redis deployments have, each made for real: Redis
//! stopped (a blackhole, a long fork), restarted without its data, made a read-only replica
//! (a failover); an instance stopped long enough to be taken for dead; a stream trimmed
//! under an instance that fell behind. Built only with the `redis` feature.
#![cfg(feature = "redis")]

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::redis_server::{instance_id, instance_with, Redis};
use common::*;
use tungstenite::stream::MaybeTlsStream;

const NOT_SENT: &str = " .... not sent: the room is unreachable";
const MISSED: &str = " .... some lines were missed here";

/// The next text line, or None if none comes within `wait`.
fn line_within(client: &mut Client, wait: Duration) -> Option<String> {
    if let MaybeTlsStream::Plain(socket) = client.ws.get_ref() {
        socket.set_read_timeout(Some(wait)).unwrap();
    }
    let line = loop {
        match client.ws.read() {
            Ok(tungstenite::Message::Text(text)) => break Some(text.as_str().to_owned()),
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None
            }
            other => panic!("expected a text line, got {other:?}"),
        }
    };
    if let MaybeTlsStream::Plain(socket) = client.ws.get_ref() {
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
    }
    line
}

/// `sender` says a marker; every client reads up to it. Returns what each read before it.
/// After an outage an instance's stream thread may still be waiting out its backoff (up to
/// 4 s) before it reads again, so each client gets a generous while.
fn read_up_to_a_marker(sender: usize, clients: &mut [Client]) -> Vec<Vec<String>> {
    let marker = format!("{}: marker", clients[sender].nickname);
    clients[sender].say("marker");
    clients
        .iter_mut()
        .map(|client| {
            let deadline = Instant::now() + 2 * PATIENCE;
            let mut heard = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match line_within(client, left) {
                    Some(line) if line == marker => return heard,
                    Some(line) => heard.push(line),
                    None => panic!("the marker never came; heard {heard:?}"),
                }
            }
        })
        .collect()
}

/// Says lines until one comes back to `listener`: the room works again. Returns how long it
/// took, and the other lines the listener heard meanwhile.
fn until_a_line_gets_through(
    speaker: &mut Client,
    listener: &mut Client,
    limit: Duration,
) -> (Duration, Vec<String>) {
    let start = Instant::now();
    let mut heard = Vec::new();
    for attempt in 0.. {
        assert!(start.elapsed() < limit, "no line got through in {limit:?}");
        let text = format!("probe {attempt}");
        let want = format!("{}: {text}", speaker.nickname);
        speaker.say(&text);
        let until = Instant::now() + Duration::from_millis(500);
        while let Some(line) =
            line_within(listener, until.saturating_duration_since(Instant::now()))
        {
            if line == want {
                return (start.elapsed(), heard);
            }
            heard.push(line);
        }
    }
    unreachable!()
}

#[test]
fn while_redis_is_stopped_newcomers_are_answered_at_once_and_every_line_is_exact() {
    const SENT: usize = 30;
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (
        instance_with(&redis.url(), &[]),
        instance_with(&redis.url(), &[]),
    );
    let mut clients = vec![one.join(), two.join()];
    settle(&mut clients);

    redis.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let mut newcomer_answered_in = None;
    let mut notices = 0;
    for i in 0..SENT {
        clients[0].say(&format!("during {i}"));
        // Once a line is refused at once, Redis has timed out once: a newcomer now must
        // not wait for it.
        while let Some(line) = line_within(&mut clients[0], Duration::from_millis(100)) {
            if line == NOT_SENT {
                notices += 1;
            }
        }
        if notices > 0 && newcomer_answered_in.is_none() {
            let asked = Instant::now();
            match handshake(&one.ws_url("/"), &[]) {
                Ok(mut ws) => {
                    let (code, _) = expect_close(&mut ws);
                    assert_eq!(
                        code, 1013,
                        "a newcomer while Redis is away: try again later"
                    );
                }
                Err(e) => panic!("the newcomer's handshake failed: {e}"),
            }
            newcomer_answered_in = Some(asked.elapsed());
        }
    }
    while stopped.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(10));
    }
    redis.signal(libc::SIGCONT);

    let took = newcomer_answered_in.expect("some line was refused while Redis was stopped");
    // 300 ms promised; the rest of the second is for a loaded machine. It was 2 s.
    assert!(
        took < Duration::from_secs(1),
        "the newcomer waited {took:?}"
    );

    // Once the sender's instance has its connection back, it settles the lines in doubt
    // before anything else: the marker comes after every notice.
    eventually("the sender's instance to reach redis again", || {
        one.stderr()
            .lines()
            .any(|l| l.contains("publisher: redis at") && l.ends_with("is back"))
    });
    let heard = read_up_to_a_marker(0, &mut clients);
    let during = format!("{}: during ", clients[0].nickname);
    let delivered = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with(&during))
            .cloned()
            .collect()
    };
    // The sender heard some of its lines before the marker had to wait; count them all.
    let refused = notices + heard[0].iter().filter(|l| *l == NOT_SENT).count();
    let to_b = delivered(&heard[1]);
    let unique: HashSet<&String> = to_b.iter().collect();
    assert_eq!(
        unique.len(),
        to_b.len(),
        "a line was delivered twice: {to_b:?}"
    );
    assert_eq!(
        to_b.len() + refused,
        SENT,
        "{} delivered, {refused} refused of {SENT}",
        to_b.len()
    );
}

#[test]
fn a_redis_paused_past_the_heartbeat_ttl_reaps_nobody() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (
        instance_with(&redis.url(), &[]),
        instance_with(&redis.url(), &[]),
    );
    let mut clients = vec![one.join(), one.join(), two.join(), two.join()];
    settle(&mut clients);
    let names = [instance_id(&one), instance_id(&two)];

    redis.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(15) {
        thread::sleep(Duration::from_millis(50));
    }
    redis.signal(libc::SIGCONT);
    // Every heartbeat key expired meanwhile, by Redis's clock. Wait until both instances
    // have beaten again: a reaper in a hurry would have struck by then.
    let mut connection = redis.connection();
    eventually("both instances to beat again", || {
        names.iter().all(|name| {
            redis::cmd("EXISTS")
                .arg(format!("threadchat:alive:{name}"))
                .query::<i64>(&mut connection)
                == Ok(1)
        })
    });
    // The publisher may still be waiting out its backoff, refusing lines, a little longer.
    let (speaker, rest) = clients.split_first_mut().unwrap();
    let (_, mut early) = until_a_line_gets_through(speaker, &mut rest[1], Duration::from_secs(15));
    for mut heard in read_up_to_a_marker(0, &mut clients) {
        heard.append(&mut early);
        assert!(
            heard.iter().all(|l| !l.ends_with(" has left.")),
            "nobody left, yet: {heard:?}"
        );
    }
    let nicknames: HashSet<&String> = clients.iter().map(|c| &c.nickname).collect();
    assert_eq!(nicknames.len(), clients.len(), "two clients share a name");
    for client in &clients {
        let holder: Option<String> = redis::cmd("HGET")
            .arg("threadchat:nicknames")
            .arg(&client.nickname)
            .query(&mut connection)
            .unwrap();
        assert!(holder.is_some(), "{} is no longer held", client.nickname);
    }
}

#[test]
fn an_instance_taken_for_dead_is_announced_once_and_closes_its_clients_with_1012() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (
        instance_with(&redis.url(), &[]),
        instance_with(&redis.url(), &[]),
    );
    let mut clients = vec![one.join(), two.join(), two.join()];
    settle(&mut clients);
    let mut witness = clients.remove(0);
    let victims: Vec<String> = clients.iter().map(|c| c.nickname.clone()).collect();

    signal_process(two.pid(), "STOP");
    let mut heard = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !victims
        .iter()
        .all(|v| heard.contains(&format!(" .... {v} has left.")))
    {
        assert!(
            Instant::now() < deadline,
            "not announced as left: {heard:?}"
        );
        if let Some(line) = line_within(&mut witness, Duration::from_secs(1)) {
            heard.push(line);
        }
    }
    signal_process(two.pid(), "CONT");
    let continued = Instant::now();
    for client in &mut clients {
        assert_eq!(
            expect_close(&mut client.ws),
            (1012, "service restart".to_owned())
        );
    }
    let took = continued.elapsed();
    assert!(
        took < Duration::from_secs(7),
        "closed {took:?} after it continued"
    );

    heard.extend(read_up_to_a_marker(0, std::slice::from_mut(&mut witness)).remove(0));
    for victim in &victims {
        let leaves = heard
            .iter()
            .filter(|l| **l == format!(" .... {victim} has left."))
            .count();
        assert_eq!(leaves, 1, "{victim} left {leaves} times: {heard:?}");
    }
    // The instance goes on: a newcomer joins it and is heard.
    let mut newcomer = two.join();
    assert_eq!(
        witness.line(),
        format!(" .... {} has joined.", newcomer.nickname)
    );
    newcomer.say("back");
    assert_eq!(witness.line(), format!("{}: back", newcomer.nickname));
}

#[test]
fn an_instance_that_missed_trimmed_lines_tells_its_clients() {
    let Some(redis) = Redis::start() else { return };
    let args = ["--redis-max-entries", "100"];
    let (one, two) = (
        instance_with(&redis.url(), &args),
        instance_with(&redis.url(), &args),
    );
    let mut clients = vec![one.join(), two.join()];
    settle(&mut clients);

    signal_process(two.pid(), "STOP");
    let stopped = Instant::now();
    let sender = &mut clients[0];
    let own = format!("{}: passing", sender.nickname);
    for _ in 0..10 {
        for _ in 0..100 {
            sender.say("passing");
        }
        for _ in 0..100 {
            assert_eq!(sender.line(), own);
        }
    }
    while stopped.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(10));
    }
    signal_process(two.pid(), "CONT");
    let heard = read_up_to_a_marker(0, &mut clients).remove(1);
    let passed = heard.iter().filter(|l| **l == own).count();
    assert!(
        passed < 1000,
        "all 1000 lines were still there: the test trims nothing"
    );
    assert_eq!(
        heard.iter().filter(|l| *l == MISSED).count(),
        1,
        "one line says lines were missed: {:?}",
        heard.iter().filter(|l| **l != own).collect::<Vec<_>>()
    );
}

#[test]
fn after_redis_restarts_empty_lines_flow_and_every_name_is_held_again() {
    names_held_again_after(|redis| redis.restart_empty());
}

#[test]
fn after_redis_is_emptied_in_place_lines_flow_and_every_name_is_held_again() {
    // FLUSHALL: the same server, still running, with nothing in it.
    names_held_again_after(|redis| {
        let () = redis::cmd("FLUSHALL")
            .query(&mut redis.connection())
            .unwrap();
    });
}

/// Two instances with a client each; Redis loses everything (`empty`); lines flow again
/// within 5 s and each connected client's name is held again by its own instance.
fn names_held_again_after(empty: impl FnOnce(&mut Redis)) {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (one, two) = (
        instance_with(&redis.url(), &[]),
        instance_with(&redis.url(), &[]),
    );
    let mut clients = vec![one.join(), two.join()];
    // One more comes and goes before the restart: its name must not come back.
    let departed = one.join();
    let departed_name = departed.nickname.clone();
    drop(departed);
    let left = format!(" .... {departed_name} has left.");
    for client in &mut clients {
        client.until(&left);
    }
    let holders = [instance_id(&one), instance_id(&two)];

    empty(&mut redis);
    let (a, b) = clients.split_at_mut(1);
    let (took, heard) = until_a_line_gets_through(&mut a[0], &mut b[0], Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(5),
        "lines flowed again after {took:?}"
    );
    let mut connection = redis.connection();
    for (client, instance) in clients.iter().zip(&holders) {
        // A name's value is "instance:client".
        eventually("the name to be held again by its instance", || {
            redis::cmd("HGET")
                .arg("threadchat:nicknames")
                .arg(&client.nickname)
                .query::<Option<String>>(&mut connection)
                .ok()
                .flatten()
                .is_some_and(|h| h.starts_with(&format!("{instance}:")))
        });
    }
    let held: Vec<String> = redis::cmd("HKEYS")
        .arg("threadchat:nicknames")
        .query(&mut connection)
        .unwrap();
    assert_eq!(held.len(), 2, "only the connected clients' names: {held:?}");
    // The lost lines are said to be lost, once, not once a second while the room is quiet.
    let mut heard = heard;
    heard.extend(read_up_to_a_marker(0, &mut clients).remove(1));
    let marks = heard.iter().filter(|l| *l == MISSED).count();
    assert!(marks <= 1, "{marks} marks: {heard:?}");
}

#[test]
fn a_redis_that_turned_read_only_refuses_lines_aloud_and_logs_a_few_lines() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (
        instance_with(&redis.url(), &[]),
        instance_with(&redis.url(), &[]),
    );
    let mut clients = vec![one.join(), two.join()];
    settle(&mut clients);

    // A failover gone wrong: Redis now follows a primary that is not there, and refuses
    // every write with READONLY.
    let _nobody = redis.follow_nobody();
    let read_only = Instant::now();
    let mut refused = 0;
    while read_only.elapsed() < Duration::from_secs(5) {
        clients[0].say("read only?");
        while let Some(line) = line_within(&mut clients[0], Duration::from_millis(250)) {
            if line == NOT_SENT {
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no line was refused while Redis was read-only");
    redis.take_writes();
    let (a, b) = clients.split_at_mut(1);
    let _ = until_a_line_gets_through(&mut a[0], &mut b[0], Duration::from_secs(15));
    for server in [&one, &two] {
        let complaints = server
            .stderr()
            .lines()
            .filter(|l| l.contains("redis at"))
            .count();
        assert!(
            complaints <= 12,
            "{complaints} lines about redis:\n{}",
            server.stderr()
        );
    }
}

#[test]
fn while_redis_is_gone_reconnects_back_off_and_never_spin() {
    let Some(redis) = Redis::start() else { return };
    let one = instance_with(&redis.url(), &[]);
    let _client = one.join();
    redis.signal(libc::SIGKILL);
    // Its port now hangs up on every connection, and counts them.
    let deadline = Instant::now() + PATIENCE;
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", redis.port)) {
            Ok(listener) => break listener,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("the port never came free: {e}"),
        }
    };
    listener.set_nonblocking(true).unwrap();
    const WATCH: Duration = Duration::from_secs(5);
    let (until, mut attempts) = (Instant::now() + WATCH, 0);
    while Instant::now() < until {
        match listener.accept() {
            Ok((socket, _)) => {
                attempts += 1;
                drop(socket);
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
    // Each thread tries again after 0.1 s, then twice as long each time up to 4 s (the
    // heartbeat every 3 s): 5 connections in 5 s here. Without the backoff, about 950.
    assert!(attempts > 0, "it never tried again");
    assert!(attempts <= 60, "{attempts} connections in {WATCH:?}");
}

#[test]
fn a_leave_refused_by_a_read_only_redis_is_announced_once_it_takes_writes_again() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (
        instance_with(&redis.url(), &[]),
        instance_with(&redis.url(), &[]),
    );
    let mut clients = vec![one.join(), two.join()];
    let leaving = one.join();
    let name = leaving.nickname.clone();
    settle(&mut clients);
    let _nobody = redis.follow_nobody();
    // It leaves while Redis refuses every write: its leave is owed, not lost.
    drop(leaving);
    eventually("the leave to be noticed", || {
        one.stderr().contains(&format!("leave {name} from"))
    });
    redis.take_writes();
    let (speaker, witness) = clients.split_at_mut(1);
    let (speaker, witness) = (&mut speaker[0], &mut witness[0]);
    let (_, mut heard) = until_a_line_gets_through(speaker, witness, Duration::from_secs(15));
    speaker.say("once");
    heard.extend(witness.until(&format!("{}: once", speaker.nickname)));
    let left = format!(" .... {name} has left.");
    assert_eq!(heard.iter().filter(|l| **l == left).count(), 1, "{heard:?}");
}

/// The next line `client` hears that is not the mark of missed lines (which a loss of
/// Redis's data brings too).
fn next_line_but_marks(client: &mut Client) -> String {
    loop {
        let line = client.line();
        if line != MISSED {
            return line;
        }
    }
}

/// Marks `instance` fenced, as the others' reap does when they take it for dead (a partition
/// longer than the heartbeat's time to live; `cluster::an_instance_cut_off_...` makes one).
/// The reap also frees its names and announces its clients; the instance itself sees only
/// the mark, which its every script checks.
fn fence(redis: &Redis, instance: &str) {
    let () = redis::cmd("HSET")
        .arg(format!("threadchat:instance:{instance}"))
        .arg("reaped")
        .arg(1)
        .query(&mut redis.connection())
        .unwrap();
}

/// The instance logged that Redis was out of reach because a script said `answer`: a script's
/// answer taken for a connection's failure.
fn blamed_redis_for(server: &Server, answer: &str) -> bool {
    server
        .stderr()
        .contains(&format!(" is unreachable ({answer})"))
}

#[test]
fn after_redis_loses_its_data_one_line_is_refused_and_the_next_goes_through() {
    let Some(redis) = Redis::start() else { return };
    let one = instance_with(&redis.url(), &[]);
    let mut talker = one.join();
    let mut connection = redis.connection();
    // The first line to find the data gone is refused: the publisher claims the names
    // again there and then. The heartbeat (every 3 s) may find it first, and then no line
    // is refused: try again.
    let refused = (0..5).any(|attempt| {
        let () = redis::cmd("FLUSHALL").query(&mut connection).unwrap();
        talker.say(&format!("probe {attempt}"));
        let answer = next_line_but_marks(&mut talker);
        if answer == NOT_SENT {
            return true;
        }
        assert_eq!(answer, format!("{}: probe {attempt}", talker.nickname));
        false
    });
    assert!(
        refused,
        "no line ever found the data gone before the heartbeat did"
    );
    talker.say("next");
    assert_eq!(
        next_line_but_marks(&mut talker),
        format!("{}: next", talker.nickname),
        "the line after the refused one"
    );
    assert!(!blamed_redis_for(&one, "lost"), "{}", one.stderr());
}

#[test]
fn a_leave_that_finds_redis_emptied_is_announced_without_waiting_for_a_line() {
    let Some(redis) = Redis::start() else { return };
    let one = instance_with(&redis.url(), &[]);
    let mut witness = one.join();
    let leaving = one.join();
    let left = format!(" .... {} has left.", leaving.nickname);
    assert_eq!(
        witness.line(),
        format!(" .... {} has joined.", leaving.nickname)
    );
    let () = redis::cmd("FLUSHALL")
        .query(&mut redis.connection())
        .unwrap();
    // The leave finds the data gone (unless the heartbeat found it first): the names are
    // claimed again, and the leave placed then, though nobody says another word.
    drop(leaving);
    assert_eq!(next_line_but_marks(&mut witness), left);
}

#[test]
fn a_line_that_finds_its_instance_fenced_closes_every_client_and_does_not_blame_redis() {
    let Some(redis) = Redis::start() else { return };
    let one = instance_with(&redis.url(), &["--trace"]);
    let mut instance = instance_id(&one);
    // The heartbeat (every 3 s) may find the fence before the line does; the instance then
    // goes on under a new name, and the test tries again with that one.
    for attempt in 0..3 {
        let mut clients = vec![one.join(), one.join()];
        settle(&mut clients);
        fence(&redis, &instance);
        let said = format!("anyone {attempt}?");
        clients[0].say(&said);
        for client in &mut clients {
            assert_eq!(client.close_frame(), (1012, "service restart".to_owned()));
        }
        let why = format!("the others took instance {instance} for dead; going on as ");
        eventually("the log to say why", || one.stderr().contains(&why));
        let log = one.stderr();
        let line = format!("{}: {said}", clients[0].nickname);
        if log.contains(&format!(
            "stream | refused threadchat:room -> fenced: {line:?}"
        )) {
            assert!(!blamed_redis_for(&one, "fenced"), "{log}");
            return;
        }
        let (_, rest) = log.rsplit_once(&why).expect("logged above");
        instance = rest.lines().next().unwrap_or_default().to_owned();
    }
    panic!("the heartbeat found the fence before the line three times");
}

#[test]
fn a_name_taken_while_redis_had_forgotten_it_is_given_up_and_the_loss_told_once() {
    let Some(redis) = Redis::start() else { return };
    let one = instance_with(&redis.url(), &[]);
    let mut clients = vec![one.join(), one.join()];
    settle(&mut clients);
    let (mut keeper, mut loser) = (clients.remove(0), clients.remove(0));
    // Redis loses its data, and before this instance claims its names again, a client of
    // another instance takes one of them.
    let () = redis::pipe()
        .atomic()
        .cmd("FLUSHALL")
        .ignore()
        .cmd("HSET")
        .arg("threadchat:nicknames")
        .arg(&loser.nickname)
        .arg("elsewhere:1")
        .ignore()
        .query(&mut redis.connection())
        .unwrap();
    // Its old holder comes back under another name; its leave is not this instance's to
    // announce. The other keeps its name.
    assert_eq!(loser.close_frame(), (1012, "service restart".to_owned()));
    assert_eq!(keeper.line(), MISSED);
    let mut connection = redis.connection();
    eventually("the keeper's name to be held again", || {
        redis::cmd("HGET")
            .arg("threadchat:nicknames")
            .arg(&keeper.nickname)
            .query::<Option<String>>(&mut connection)
            .ok()
            .flatten()
            .is_some_and(|h| h.starts_with(&format!("{}:", instance_id(&one))))
    });
    // Told once, not once a second while the room stays quiet (the stream is read again
    // every second).
    assert_eq!(
        lines_for(&mut keeper, Duration::from_secs(3)),
        Vec::<String>::new()
    );
    keeper.say("still here");
    assert_eq!(keeper.line(), format!("{}: still here", keeper.nickname));
    eventually("the log to count the name lost", || {
        one.stderr().contains("1 taken meanwhile")
    });
}

/// More lines than the publisher keeps waiting: what one round trip takes (1,000) plus the
/// queue (4,096), and some.
const FLOOD_LINES: usize = 6_000;

#[test]
fn a_full_publisher_refuses_lines_at_once_but_keeps_the_leave_behind_them() {
    use tungstenite::Message;
    let Some(redis) = Redis::start() else { return };
    let one = instance_with(&redis.url(), &[]);
    let mut clients = vec![one.join(), one.join()];
    settle(&mut clients);
    let (mut witness, mut flooder) = (clients.remove(0), clients.remove(0));
    let name = flooder.nickname.clone();
    // Redis stalls; the flooder says more than can wait for it, then leaves, all at once.
    redis.signal(libc::SIGSTOP);
    for i in 0..FLOOD_LINES {
        flooder
            .ws
            .write(Message::text(format!("flood {i}")))
            .unwrap();
    }
    flooder.ws.close(None).unwrap();
    // The lines past the queue are refused at once; the flooder may not hear it, having
    // closed before the room got to them.
    loop {
        match flooder.ws.read() {
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
            Ok(_) => {}
            Err(e) => panic!("the flooder's connection failed: {e}\n{}", one.stderr()),
        }
    }
    redis.signal(libc::SIGCONT);
    // The leave was kept: it is announced, once.
    let left = format!(" .... {name} has left.");
    let mut heard = Vec::new();
    let deadline = Instant::now() + 2 * PATIENCE;
    while !heard.contains(&left) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match line_within(&mut witness, wait) {
            Some(line) => heard.push(line),
            None => panic!("{name}'s leave was never announced"),
        }
    }
    heard.extend(read_up_to_a_marker(0, std::slice::from_mut(&mut witness)).remove(0));
    assert_eq!(heard.iter().filter(|l| **l == left).count(), 1);
}
