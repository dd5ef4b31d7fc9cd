//! The suite itself: compiled only with the `redis` feature, from `../cluster_resume.rs`.

use std::time::{Duration, Instant};

use crate::common::redis_server::{instance_id, instance_with, Redis};
use crate::common::resumable::{Resumable, SUBPROTOCOL};
use crate::common::*;
use tungstenite::Message;

/// README: a dead instance's clients are announced as left "within 13 s".
const PROMISED_NOTICE: Duration = Duration::from_secs(13);
/// README: an ended window is noticed "within 3 s" (the heartbeat ends them).
const PROMISED_EXPIRY: Duration = Duration::from_secs(3);
/// What a loaded two-core CI machine may add to a promised time.
const MARGIN: Duration = Duration::from_secs(1);

fn instance(redis: &Redis, args: &[&str]) -> Server {
    instance_with(&redis.url(), args)
}

fn leave_of(name: &str) -> String {
    format!(" .... {name} has left.")
}

fn join_of(name: &str) -> String {
    format!(" .... {name} has joined.")
}

/// The lines `client` hears before its own `marker` line: with every other line already
/// read, that is what it heard that it should not have.
fn before_marker(client: &mut Client, marker: &str) -> Vec<String> {
    client.say(marker);
    client.until(&format!("{}: {marker}", client.nickname))
}

/// Resumes `token` on `server` and checks it comes back as `nickname`, first hearing
/// `resumed <missed>`.
fn resume_on(server: &Server, dropped: (String, String, String), missed: usize) -> Resumable {
    let (token, nickname, position) = dropped;
    let (ws, first) = Resumable::back(server, &token, &position);
    assert_eq!(first, format!("resumed {missed}"));
    Resumable {
        ws,
        token,
        nickname,
        position,
    }
}

#[test]
fn a_client_cut_from_one_instance_resumes_on_another_with_every_line_it_missed() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (instance(&redis, &[]), instance(&redis, &[]));
    let mut on_one = one.join();
    let mut on_two = two.join();
    assert_eq!(on_one.line(), join_of(&on_two.nickname));
    let mut page = Resumable::new_session(&one);
    assert_eq!(on_one.line(), join_of(&page.nickname));
    assert_eq!(on_two.line(), join_of(&page.nickname));
    on_two.say("before");
    let before = format!("{}: before", on_two.nickname);
    assert_eq!(page.line(), before);
    assert_eq!(on_one.line(), before);
    assert_eq!(on_two.line(), before);
    let dropped = page.cut();

    // Lines from both instances go by while it is away; both have them before it returns.
    on_one.say("missed on one");
    on_two.say("missed on two");
    let missed = [
        format!("{}: missed on one", on_one.nickname),
        format!("{}: missed on two", on_two.nickname),
    ];
    // Every instance shows them in the stream's one order.
    let order = vec![on_two.line(), on_two.line()];
    assert_eq!(vec![on_one.line(), on_one.line()], order);
    let mut sorted = order.clone();
    sorted.sort();
    let mut want = missed.to_vec();
    want.sort();
    assert_eq!(sorted, want);
    let mut back = resume_on(&two, dropped, 2);
    for line in &order {
        assert_eq!(&back.line(), line);
    }
    back.ws.send(Message::text("back on two")).unwrap();
    let from_it = format!("{}: back on two", back.nickname);
    assert_eq!(back.line(), from_it);
    // Neither instance's clients heard a leave or a join: only its line.
    assert_eq!(on_one.until(&from_it), Vec::<String>::new());
    assert_eq!(on_two.until(&from_it), Vec::<String>::new());
}

#[test]
fn a_second_connection_on_another_instance_takes_the_session_over() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (instance(&redis, &[]), instance(&redis, &[]));
    let mut witness = two.join();
    let mut first = Resumable::new_session(&one);
    assert_eq!(witness.line(), join_of(&first.nickname));
    let (token, nickname, position) = (
        first.token.clone(),
        first.nickname.clone(),
        first.position.clone(),
    );
    let mut second = resume_on(&two, (token, nickname.clone(), position), 0);
    let (code, reason) = expect_close(&mut first.ws);
    assert_eq!(
        (code, reason.as_str()),
        (1008, "resumed on another connection")
    );
    second.ws.send(Message::text("the one that stays")).unwrap();
    let line = format!("{nickname}: the one that stays");
    assert_eq!(second.line(), line);
    assert_eq!(witness.until(&line), Vec::<String>::new());
    // The name is the second connection's now: when it closes, its leave is announced.
    second.ws.close(None).unwrap();
    assert_eq!(witness.line(), leave_of(&nickname));
}

#[test]
fn a_stopped_instance_closes_with_1012_and_its_sessions_resume_elsewhere_unannounced() {
    let Some(redis) = Redis::start() else { return };
    let (mut one, two) = (instance(&redis, &[]), instance(&redis, &[]));
    let mut witness = two.join();
    let mut page = Resumable::new_session(&one);
    assert_eq!(witness.line(), join_of(&page.nickname));
    let mut plain = one.join();
    assert_eq!(witness.line(), join_of(&plain.nickname));
    assert_eq!(page.line(), join_of(&plain.nickname));

    assert!(one.signal_and_wait("TERM").success());
    let (code, _) = expect_close(&mut page.ws);
    assert_eq!(code, 1012, "service restart: come back");
    assert_eq!(plain.close_frame().0, 1012);
    // A plain client has no session to come back to: its leave is announced; the
    // resumable one's is not.
    assert_eq!(
        before_marker(&mut witness, "after the stop"),
        vec![leave_of(&plain.nickname)]
    );
    let position = page.position.clone();
    let mut back = resume_on(&two, (page.token, page.nickname, position), 2);
    assert_eq!(back.line(), leave_of(&plain.nickname));
    assert_eq!(back.line(), format!("{}: after the stop", witness.nickname));
    back.ws.send(Message::text("still me")).unwrap();
    let line = format!("{}: still me", back.nickname);
    assert_eq!(witness.until(&line), Vec::<String>::new());
}

#[test]
fn a_session_whose_window_ends_is_announced_once_by_the_cluster() {
    let Some(redis) = Redis::start() else { return };
    let window = ["--resume-window", "1"];
    let (one, two) = (instance(&redis, &window), instance(&redis, &window));
    let mut witness = two.join();
    let page = Resumable::new_session(&one);
    assert_eq!(witness.line(), join_of(&page.nickname));
    let dropped = Instant::now();
    let (token, nickname, position) = page.cut();
    assert_eq!(witness.line(), leave_of(&nickname));
    let waited = dropped.elapsed();
    assert!(
        waited >= Duration::from_millis(900)
            && waited < Duration::from_secs(1) + PROMISED_EXPIRY + MARGIN,
        "announced after {waited:?}"
    );
    // Once: the next line the witness hears is its own. Coming back is a fresh start.
    assert!(before_marker(&mut witness, "once").is_empty());
    let (mut ws, first) = Resumable::back(&one, &token, &position);
    assert_eq!(first, "missed");
    let session = read_text(&mut ws);
    assert!(session.starts_with("session ") && !session.contains(&token));
    let join = read_text(&mut ws);
    assert!(join.ends_with(" has joined."), "{join:?}");
}

#[test]
fn a_killed_instance_s_sessions_resume_elsewhere_and_only_its_plain_clients_are_announced() {
    let Some(redis) = Redis::start() else { return };
    let (mut one, two) = (instance(&redis, &[]), instance(&redis, &[]));
    let mut witness = two.join();
    let page = Resumable::new_session(&one);
    assert_eq!(witness.line(), join_of(&page.nickname));
    let plain = one.join();
    assert_eq!(witness.line(), join_of(&plain.nickname));
    let killed = Instant::now();
    assert!(!one.signal_and_wait("KILL").success());
    let plain_leave = leave_of(&plain.nickname);
    // Reaping takes up to 13 s: the plain client's leave is the sign that it happened. (The
    // survivor reaps only once its own heartbeats have held for the time to live, 10 s, which
    // they have by then: it started before the kill.)
    let by = killed + PROMISED_NOTICE + MARGIN;
    let mut heard = Vec::new();
    while !heard.contains(&plain_leave) {
        match line_by(&mut witness, by) {
            Some(line) => heard.push(line),
            None => panic!("not reaped in time: {heard:?}"),
        }
    }
    assert_eq!(
        heard,
        vec![plain_leave.clone()],
        "the session was announced"
    );
    let (token, nickname, position) = page.cut();
    let mut back = resume_on(&two, (token, nickname, position), 2);
    assert_eq!(back.line(), join_of(&plain.nickname));
    assert_eq!(back.line(), plain_leave);
    back.ws.send(Message::text("survived")).unwrap();
    let line = format!("{}: survived", back.nickname);
    assert_eq!(witness.until(&line), Vec::<String>::new());
}

#[test]
fn an_instance_started_after_the_drop_resumes_it_from_the_stream_s_recent_past() {
    let Some(redis) = Redis::start() else { return };
    let one = instance(&redis, &[]);
    let mut witness = one.join();
    let mut page = Resumable::new_session(&one);
    assert_eq!(witness.line(), join_of(&page.nickname));
    witness.say("before");
    let before = format!("{}: before", witness.nickname);
    assert_eq!(page.line(), before);
    let dropped = page.cut();
    witness.say("while away");
    let missed = format!("{}: while away", witness.nickname);
    witness.until(&missed);
    // Started after all of it: what it missed is older than the new instance.
    let late = instance(&redis, &[]);
    let mut back = resume_on(&late, dropped, 1);
    assert_eq!(back.line(), missed);
    assert_eq!(
        before_marker(&mut witness, "later"),
        Vec::<String>::new(),
        "no leave, no join"
    );
    assert_eq!(back.line(), format!("{}: later", witness.nickname));
}

#[test]
fn a_name_resumed_on_another_instance_is_held_there_again_after_redis_loses_it() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (one, two) = (instance(&redis, &[]), instance(&redis, &[]));
    let mut witness = two.join();
    let page = Resumable::new_session(&one);
    assert_eq!(witness.line(), join_of(&page.nickname));
    let (token, nickname, position) = page.cut();
    let back = resume_on(&two, (token, nickname.clone(), position), 0);
    let holder_is_two = |connection: &mut redis::Connection| {
        redis::cmd("HGET")
            .arg("threadchat:nicknames")
            .arg(&nickname)
            .query::<Option<String>>(connection)
            .ok()
            .flatten()
            .is_some_and(|h| h.starts_with(&format!("{}:", instance_id(&two))))
    };
    let mut connection = redis.connection();
    eventually("the resumed name to be held by the second instance", || {
        holder_is_two(&mut connection)
    });
    // Redis comes back empty: the second instance claims again every name it holds, the
    // one that moved to it included.
    redis.restart_empty();
    let mut connection = redis.connection();
    eventually("the resumed name to be held there again", || {
        holder_is_two(&mut connection)
    });
    drop(back);
}

#[test]
fn a_resume_refused_by_a_read_only_redis_is_told_to_come_back_later_and_keeps_its_session() {
    let Some(redis) = Redis::start() else { return };
    let one = instance(&redis, &[]);
    let page = Resumable::new_session(&one);
    let (token, nickname, position) = page.cut();
    eventually("the session to wait", || {
        one.stderr().contains(&format!("drop  {nickname}"))
    });
    // A failover gone wrong: Redis follows a primary that is not there, and refuses every
    // write with READONLY. That says nothing about the session: come back later.
    let _nobody = redis.follow_nobody();
    let mut ws =
        handshake(&one.ws_url("/"), &[crate::common::resumable::SUBPROTOCOL]).expect("handshake");
    ws.send(Message::text(format!("resume {token} {position}")))
        .unwrap();
    assert_eq!(expect_close(&mut ws).0, 1013, "try again later");
    redis.take_writes();
    // Back within the window, the session is still there.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut ws = handshake(&one.ws_url("/"), &[crate::common::resumable::SUBPROTOCOL])
            .expect("handshake");
        ws.send(Message::text(format!("resume {token} {position}")))
            .unwrap();
        match ws.read() {
            Ok(Message::Text(first)) => {
                assert!(first.starts_with("resumed "), "{first:?}");
                break;
            }
            _ => assert!(Instant::now() < deadline, "never resumed"),
        }
    }
}

#[test]
fn a_client_away_for_several_heartbeats_still_resumes_unannounced() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (instance(&redis, &[]), instance(&redis, &[]));
    let mut witness = two.join();
    let page = Resumable::new_session(&one);
    assert_eq!(witness.line(), join_of(&page.nickname));
    let dropped = page.cut();
    // Away through two of the heartbeats' checks for ended windows (every 3 s), well within
    // its own window (120 s).
    std::thread::sleep(Duration::from_secs(7));
    let back = resume_on(&two, dropped, 0);
    assert_eq!(
        before_marker(&mut witness, "nobody left"),
        Vec::<String>::new()
    );
    drop(back);
}

#[test]
fn a_resume_on_another_instance_from_before_its_join_gets_no_earlier_line() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (instance(&redis, &[]), instance(&redis, &[]));
    // A position from before the session existed: the first of three lines another
    // resumable client heard.
    let mut other = Resumable::new_session(&one);
    let mut witness = one.join();
    assert_eq!(other.line(), join_of(&witness.nickname));
    for i in 0..3 {
        witness.say(&format!("earlier {i}"));
    }
    assert_eq!(other.line(), format!("{}: earlier 0", witness.nickname));
    let earlier = other.position.clone();
    let page = Resumable::new_session(&one);
    let join = join_of(&page.nickname);
    witness.until(&join);
    let (token, nickname, position) = page.cut();
    // Its own join is the first line it may ever get back, wherever it resumes.
    let (mut ws, first) = Resumable::back(&two, &token, &earlier);
    assert_eq!(first, "resumed 1");
    assert_eq!(read_text(&mut ws), "missed");
    let mut back = Resumable {
        ws,
        token,
        nickname,
        position,
    };
    assert_eq!(back.line(), join);
    witness.say("now");
    assert_eq!(back.line(), format!("{}: now", witness.nickname));
}

/// README: an unknown or expired token "gets a fresh session after `missed`, never an error
/// to retry". In a cluster it is Redis that does not know it: the resume is refused as
/// unknown, not as Redis being away (close 1013), and the newcomer's join is heard on every
/// instance.
#[test]
fn a_token_redis_does_not_know_gets_a_fresh_session_and_the_mark() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (instance(&redis, &[]), instance(&redis, &[]));
    let mut witness = two.join();
    let (mut ws, first) = Resumable::back(&one, &"0".repeat(32), "1700000000000-3");
    assert_eq!(first, "missed");
    let session = read_text(&mut ws);
    assert!(session.starts_with("session "), "{session:?}");
    let join = read_text(&mut ws);
    let (_, join) = join
        .split_once(' ')
        .unwrap_or_else(|| panic!("no position in {join:?}"));
    assert!(join.ends_with(" has joined."), "{join:?}");
    assert_eq!(witness.line(), join);
}

#[test]
fn a_session_waiting_in_redis_holds_its_seat_here_until_its_window_ends() {
    let Some(redis) = Redis::start() else { return };
    const WINDOW: Duration = Duration::from_secs(3);
    let window = WINDOW.as_secs().to_string();
    let one = instance(
        &redis,
        &[
            "--max-clients",
            "1",
            "--resume-window",
            &window,
            "--admin-port",
            "0",
        ],
    );
    // The admin port counts the session waiting for its client while it waits.
    let waiting = || {
        let (_, _, metrics) = get(one.admin.expect("an admin port"), "/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("threadchat_sessions_waiting "))
            .map(str::to_owned)
    };
    let two = instance(&redis, &["--resume-window", &window]);
    let mut witness = two.join();
    let page = Resumable::new_session(&one);
    assert_eq!(witness.line(), join_of(&page.nickname));
    let cut = Instant::now();
    let (_, nickname, _) = page.cut();
    let status = || match handshake(&one.ws_url("/"), &[]) {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    eventually("the session counted as waiting", || {
        waiting().as_deref() == Some("1")
    });
    // Its session waits in Redis, but its seat is this instance's, and stays taken through
    // the window, past the room's checks each second.
    while cut.elapsed() < WINDOW - Duration::from_millis(700) {
        assert_eq!(
            status(),
            503,
            "a place freed {:?} into the window",
            cut.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(witness.line(), leave_of(&nickname));
    // Then the window has ended, and the room's next check gives the place back.
    eventually("the place given back after the window", || status() == 101);
    assert!(cut.elapsed() < WINDOW + PROMISED_EXPIRY + MARGIN);
    eventually("no session counted as waiting", || {
        waiting().as_deref() == Some("0")
    });
}

#[test]
fn a_client_waiting_for_its_resume_when_the_instance_stops_is_told_to_come_back() {
    let Some(redis) = Redis::start() else { return };
    let mut one = instance(&redis, &[]);
    let page = Resumable::new_session(&one);
    let (token, _, position) = page.cut();
    // Redis does not answer, so the resume stays on its way when the instance stops.
    redis.signal(libc::SIGSTOP);
    let mut ws = handshake(&one.ws_url("/"), &[SUBPROTOCOL]).expect("handshake");
    ws.send(Message::text(format!("resume {token} {position}")))
        .expect("send");
    let tungstenite::stream::MaybeTlsStream::Plain(socket) = ws.get_ref() else {
        unreachable!("plain TCP")
    };
    eventually("the server to read the resume", || {
        server_side_queues(&one, socket) == Some((0, 0))
    });
    assert!(one.signal_and_wait("TERM").success());
    redis.signal(libc::SIGCONT);
    let (code, _) = expect_close(&mut ws);
    assert_eq!(code, 1012, "service restart: come back");
}
