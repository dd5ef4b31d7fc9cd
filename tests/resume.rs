//! Resumable sessions: a client that asks for the `threadchat-resume` subprotocol and drops
//! without a close comes back as itself, with every line it missed, and nobody else notices.

mod common;

use std::time::{Duration, Instant};

use common::resumable::{Resumable, SUBPROTOCOL};
use common::*;
use tungstenite::Message;

/// Reads `client` until its own `marker` line, returning what came before it.
fn until_marker(client: &mut Client, marker: &str) -> Vec<String> {
    let want = format!("{}: {marker}", client.nickname);
    client.say(marker);
    client.until(&want)
}

#[test]
fn a_dropped_client_comes_back_as_itself_with_every_line_it_missed() {
    let server = Server::start(&["--rate-limit", "0"]);
    let mut witness = server.join();
    let mut page = Resumable::new_session(&server);
    assert_eq!(
        witness.line(),
        format!(" .... {} has joined.", page.nickname)
    );
    witness.say("before");
    let before = format!("{}: before", witness.nickname);
    assert_eq!(witness.line(), before);
    assert_eq!(page.line(), before);
    let (token, nickname, position) = page.cut();

    // Lines go by while it is away.
    let missed: Vec<String> = (0..3).map(|i| format!("missed {i}")).collect();
    for line in &missed {
        witness.say(line);
    }
    let (mut ws, first) = Resumable::back(&server, &token, &position);
    assert_eq!(first, "resumed 3");
    let mut back = Resumable {
        ws,
        token,
        nickname,
        position,
    };
    for line in &missed {
        assert_eq!(back.line(), format!("{}: {line}", witness.nickname));
    }
    // Then live lines, and it speaks under its old name.
    back.ws.send(Message::text("I am back")).unwrap();
    let from_it = format!("{}: I am back", back.nickname);
    assert_eq!(back.line(), from_it);
    // The others saw no leave and no join: only the lines.
    let heard = witness.until(&from_it);
    let expected: Vec<String> = missed
        .iter()
        .map(|l| format!("{}: {l}", witness.nickname))
        .collect();
    assert_eq!(heard, expected, "the witness heard something else");
    ws = back.ws;
    drop(ws);
}

#[test]
fn after_the_window_it_is_announced_once_and_comes_back_as_a_newcomer_with_a_mark() {
    let server = Server::start(&["--resume-window", "1"]);
    let mut witness = server.join();
    let page = Resumable::new_session(&server);
    witness.line();
    let (token, nickname, position) = page.cut();
    let dropped = Instant::now();
    assert_eq!(witness.line(), format!(" .... {nickname} has left."));
    let waited = dropped.elapsed();
    // The window (1 s), then the next check (every second): 2 s, and one more for a loaded
    // machine.
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "announced after {waited:?}"
    );
    let (mut ws, first) = Resumable::back(&server, &token, &position);
    assert_eq!(
        first, "missed",
        "a visible mark that lines may have been missed"
    );
    let session = read_text(&mut ws);
    assert!(session.starts_with("session "), "{session:?}");
    assert_ne!(&session["session ".len()..], token, "a fresh session");
    let join = read_text(&mut ws);
    let newcomer = join
        .split_once(' ')
        .map(|(_, line)| line.to_owned())
        .unwrap_or_default();
    assert!(newcomer.ends_with(" has joined."), "{join:?}");
    assert_eq!(witness.line(), newcomer);
    // Announced once: the next line the witness hears is its own.
    assert!(until_marker(&mut witness, "once").is_empty());
}

#[test]
fn a_clean_close_is_announced_at_once() {
    let server = Server::start(&[]);
    let mut witness = server.join();
    let mut page = Resumable::new_session(&server);
    witness.line();
    let closed = Instant::now();
    page.ws.close(None).unwrap();
    while page.ws.read().is_ok() {}
    // Not after the grace a tab going away (1001) gets.
    let left = line_by(&mut witness, closed + AT_ONCE)
        .unwrap_or_else(|| panic!("no leave within {AT_ONCE:?} of the close"));
    assert_eq!(left, format!(" .... {} has left.", page.nickname));
}

/// README: a close frame is announced at once, and the session ends with it: its token is
/// an expired one from then on, which gets a fresh session after `missed`, never the old
/// name back after its leave was heard.
#[test]
fn a_session_ended_with_a_close_frame_cannot_be_resumed() {
    let server = Server::start(&[]);
    let mut witness = server.join();
    let mut page = Resumable::new_session(&server);
    witness.line();
    let (token, position) = (page.token.clone(), page.position.clone());
    page.ws.close(None).unwrap();
    while page.ws.read().is_ok() {}
    assert_eq!(witness.line(), format!(" .... {} has left.", page.nickname));
    let (mut ws, first) = Resumable::back(&server, &token, &position);
    assert_eq!(first, "missed", "the closed session was resumed");
    let session = read_text(&mut ws);
    assert!(session.starts_with("session "), "{session:?}");
    assert_ne!(&session["session ".len()..], token, "a fresh session");
    let join = read_text(&mut ws);
    assert!(join.ends_with(" has joined."), "{join:?}");
}

#[test]
fn a_second_connection_with_the_token_takes_over_and_the_first_is_closed() {
    let server = Server::start(&[]);
    let mut witness = server.join();
    let mut first = Resumable::new_session(&server);
    witness.line();
    let (token, position) = (first.token.clone(), first.position.clone());
    let (mut second, greeting) = Resumable::back(&server, &token, &position);
    assert_eq!(greeting, "resumed 0");
    let (code, reason) = expect_close(&mut first.ws);
    assert_eq!(
        (code, reason.as_str()),
        (1008, "resumed on another connection")
    );
    second.send(Message::text("taken over")).unwrap();
    let line = format!("{}: taken over", first.nickname);
    assert_eq!(
        witness.until(&line),
        Vec::<String>::new(),
        "no leave, no join"
    );
}

#[test]
fn an_unknown_token_gets_a_fresh_session_and_the_mark() {
    let server = Server::start(&[]);
    let (mut ws, first) = Resumable::back(&server, &"0".repeat(32), "17");
    assert_eq!(first, "missed");
    assert!(read_text(&mut ws).starts_with("session "));
    assert!(read_text(&mut ws).ends_with(" has joined."));
}

#[test]
fn a_first_message_that_is_neither_new_nor_resume_is_closed_with_1008() {
    let server = Server::start(&[]);
    let mut ws = handshake(&server.ws_url("/"), &[SUBPROTOCOL]).expect("handshake");
    ws.send(Message::text("hello")).unwrap();
    let (code, reason) = expect_close(&mut ws);
    assert_eq!(code, 1008);
    assert!(reason.contains("new"), "{reason:?}");
}

#[test]
fn a_binary_first_message_is_closed_with_1003_text_only() {
    let server = Server::start(&[]);
    let mut ws = handshake(&server.ws_url("/"), &[SUBPROTOCOL]).expect("handshake");
    ws.send(Message::binary(b"new".to_vec())).unwrap();
    assert_eq!(
        expect_close(&mut ws),
        (1003, "text messages only".to_owned())
    );
}

#[test]
fn tokens_never_reach_the_logs_or_the_trace() {
    let server = Server::start(&["--trace"]);
    let page = Resumable::new_session(&server);
    let (token, _, position) = page.cut();
    let (mut back, greeting) = Resumable::back(&server, &token, &position);
    assert_eq!(greeting, "resumed 0");
    back.send(Message::text("after")).unwrap();
    read_text(&mut back);
    eventually("the session's frames in the trace", || {
        let trace = server.stderr();
        trace.contains("session <token>") && trace.contains("resumed its session")
    });
    // A client that gets the format wrong still holds a real token: it is closed with 1008,
    // and its message is not printed either.
    for wrong in [format!("resume  {token} 1"), format!("Resume {token} 1")] {
        let mut ws = handshake(&server.ws_url("/"), &[SUBPROTOCOL]).expect("handshake");
        ws.send(Message::text(wrong)).unwrap();
        assert_eq!(expect_close(&mut ws).0, 1008);
    }
    eventually("the wrong first messages in the trace", || {
        server
            .stderr()
            .matches("first message: neither new nor resume")
            .count()
            == 2
    });
    assert!(!server.stderr().contains(&token), "the token was printed");
}

#[test]
fn a_line_for_the_client_alone_comes_after_a_dash_not_a_position() {
    let server = Server::start(&["--rate-limit", "1"]);
    let mut page = Resumable::new_session(&server);
    // A burst of 2, then the flood limit answers the sender alone.
    for i in 0..3 {
        page.ws.send(Message::text(format!("line {i}"))).unwrap();
    }
    let mut heard = Vec::new();
    let notice = loop {
        let text = read_text(&mut page.ws);
        if !text.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            break text;
        }
        heard.push(text);
    };
    assert_eq!(notice, "-  .... slow down: message not sent");
    assert!(heard.len() <= 2, "{heard:?}");
}

/// Closes with 1001 "going away", as a browser does when its tab reloads or closes.
fn going_away(page: &mut Resumable) {
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::protocol::CloseFrame;
    let frame = CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    };
    page.ws.close(Some(frame)).unwrap();
    while page.ws.read().is_ok() {}
}

#[test]
fn a_reloaded_tab_going_away_comes_back_as_itself_unannounced() {
    let server = Server::start(&[]);
    let mut witness = server.join();
    let mut page = Resumable::new_session(&server);
    witness.line();
    going_away(&mut page);
    let (mut ws, first) = Resumable::back(&server, &page.token, &page.position);
    assert_eq!(first, "resumed 0");
    ws.send(Message::text("reloaded")).unwrap();
    let line = format!("{}: reloaded", page.nickname);
    assert_eq!(
        witness.until(&line),
        Vec::<String>::new(),
        "no leave, no join"
    );
}

#[test]
fn a_tab_gone_away_for_good_is_announced_once_the_grace_ends() {
    // The grace (5 s) is never longer than the window.
    let server = Server::start(&["--resume-window", "1"]);
    let mut witness = server.join();
    let mut page = Resumable::new_session(&server);
    witness.line();
    let closed = Instant::now();
    going_away(&mut page);
    assert_eq!(witness.line(), format!(" .... {} has left.", page.nickname));
    let waited = closed.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "announced after {waited:?}"
    );
}

#[test]
fn each_session_waiting_for_its_client_ends_when_its_own_wait_does() {
    // A tab gone away waits the reload grace (5 s); a connection dropped, the whole window.
    let server = Server::start(&["--resume-window", "6"]);
    let mut witness = server.join();
    let dropped = Resumable::new_session(&server);
    witness.line();
    let mut tab = Resumable::new_session(&server);
    witness.line();
    let (_, dropped_name, _) = dropped.cut();
    going_away(&mut tab);
    // The tab's wait ends first; the dropped connection's session still waits then, and
    // ends a second later.
    assert_eq!(witness.line(), format!(" .... {} has left.", tab.nickname));
    assert_eq!(witness.line(), format!(" .... {dropped_name} has left."));
}

#[test]
fn a_session_whose_place_is_no_longer_kept_resumes_from_now_with_the_mark() {
    let server = Server::start(&[]);
    let mut witness = server.join();
    let page = Resumable::new_session(&server);
    witness.line();
    let (token, nickname, _) = page.cut();
    // A position this server never gave: the session is known, its place is not.
    let (mut ws, first) = Resumable::back(&server, &token, "999999");
    assert_eq!(first, "resumed 0");
    assert_eq!(read_text(&mut ws), "missed");
    ws.send(Message::text("same name")).unwrap();
    let line = format!("{nickname}: same name");
    assert_eq!(witness.until(&line), Vec::<String>::new());
}

#[test]
fn one_session_ending_leaves_the_others_their_places() {
    let server = Server::start(&["--rate-limit", "0"]);
    let mut witness = server.join();
    let mut leaving = Resumable::new_session(&server);
    let staying = Resumable::new_session(&server);
    witness.until(&format!(" .... {} has joined.", staying.nickname));
    leaving.line(); // the other's join
                    // One drops; while it is away, the other's session ends for good, with a close frame.
    let (token, _, position) = staying.cut();
    leaving.ws.close(None).unwrap();
    let leave = format!(" .... {} has left.", leaving.nickname);
    witness.until(&leave);
    witness.say("while you were out");
    let said = format!("{}: while you were out", witness.nickname);
    witness.until(&said);
    let (ws, first) = Resumable::back(&server, &token, &position);
    assert_eq!(first, "resumed 2", "its place was kept");
    let mut back = Resumable {
        ws,
        token,
        nickname: String::new(),
        position,
    };
    assert_eq!(back.line(), leave);
    assert_eq!(back.line(), said);
}

#[test]
fn a_client_dropped_for_the_write_timeout_keeps_its_session() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
    // README: once its socket has taken nothing for the write timeout, within a second more;
    // and half a second for a loaded machine.
    const DROPPED_WITHIN: Duration = WRITE_TIMEOUT
        .saturating_add(Duration::from_secs(1))
        .saturating_add(Duration::from_millis(500));
    let server = Server::start(&[
        "--rate-limit",
        "0",
        "--write-timeout",
        "1",
        "--max-lag-bytes",
        "1073741824",
    ]);
    let mut witness = server.join();
    let page = Resumable::new_session(&server);
    witness.until(&format!(" .... {} has joined.", page.nickname));
    // 16 MiB while the page reads nothing: its socket fills, and after a second it is
    // dropped. The room takes it for lost, as a lost network, so its session waits.
    echoed_flood(&mut witness, 256);
    // Its socket took its last byte before the flood's end, at the latest.
    let flooded = Instant::now();
    let dropped = format!("drop  {} from", page.nickname);
    eventually_by(
        "the write timeout to drop the page",
        flooded + DROPPED_WITHIN,
        || server.stderr().contains(&dropped),
    );
    let (token, _, position) = page.cut();
    let (_ws, first) = Resumable::back(&server, &token, &position);
    assert!(first.starts_with("resumed "), "{first:?}");
    witness.say("marker");
    assert_eq!(
        witness.line(),
        format!("{}: marker", witness.nickname),
        "the others heard of it"
    );
}

#[test]
fn a_client_gone_silent_keeps_its_session() {
    // A phone asleep, a network gone: the client answers no ping. Taken for gone after the
    // pong timeout, it is closed with 1001 and, as after a lost connection, its session waits.
    let server = Server::start(&["--ping-interval", "1", "--pong-timeout", "2"]);
    let mut witness = server.join();
    let page = Resumable::new_session(&server);
    witness.until(&format!(" .... {} has joined.", page.nickname));
    // The witness reads all along, and so answers every ping, until the page, back, speaks.
    let marker = format!("{}: marker", page.nickname);
    let heard = std::thread::spawn(move || witness.until(&marker));
    // The page reads nothing, so it answers nothing, until the server gives up on it.
    let dropped = format!("drop  {} from", page.nickname);
    eventually("the silent page to be dropped", || {
        server.stderr().contains(&dropped)
    });
    let (token, nickname, position) = page.cut();
    let (mut ws, first) = Resumable::back(&server, &token, &position);
    assert!(first.starts_with("resumed "), "{first:?}");
    ws.send(Message::text("marker")).unwrap();
    let heard = heard.join().unwrap();
    let left = format!(" .... {nickname} has left.");
    assert!(!heard.contains(&left), "its leave was announced: {heard:?}");
}

#[test]
fn a_client_away_while_many_segments_of_lines_go_by_gets_them_all() {
    let server = Server::start(&["--rate-limit", "0"]);
    let mut witness = server.join();
    let page = Resumable::new_session(&server);
    witness.until(&format!(" .... {} has joined.", page.nickname));
    let (token, _, position) = page.cut();
    // About 300 KB: the log's segments hold 64 KiB, and nobody's cursor is in the older
    // ones; the room keeps them for the session.
    let line = "s".repeat(1000);
    let mine = format!("{}: {line}", witness.nickname);
    for _ in 0..300 {
        witness.say(&line);
        let got = witness.line();
        assert!(got == mine, "the witness heard {got:.80}");
    }
    let (ws, first) = Resumable::back(&server, &token, &position);
    assert_eq!(first, "resumed 300");
    let mut back = Resumable {
        ws,
        token,
        nickname: String::new(),
        position,
    };
    for _ in 0..300 {
        let got = back.line();
        assert!(got == mine, "it got {got:.80}");
    }
}

/// A page connected throughout keeps the room numbering its lines; a plain witness says
/// `lines` lines of `bytes` bytes before anyone else comes. Returns the page, the witness and
/// the position of the witness's first line: a position from before any later session.
fn numbered_history(server: &Server, lines: usize, bytes: usize) -> (Resumable, Client, String) {
    let mut other = Resumable::new_session(server);
    let mut witness = server.join();
    assert_eq!(
        other.line(),
        format!(" .... {} has joined.", witness.nickname)
    );
    let line = "h".repeat(bytes);
    for _ in 0..lines {
        witness.say(&line);
    }
    let mut first = None;
    for _ in 0..lines {
        assert_eq!(other.line(), format!("{}: {line}", witness.nickname));
        first.get_or_insert_with(|| other.position.clone());
    }
    (other, witness, first.unwrap_or_default())
}

#[test]
fn a_resume_from_before_its_join_gets_no_earlier_line() {
    let server = Server::start(&["--rate-limit", "0"]);
    let (_other, mut witness, earlier) = numbered_history(&server, 3, 10);
    let page = Resumable::new_session(&server);
    let join = format!(" .... {} has joined.", page.nickname);
    let (token, nickname, position) = page.cut();
    // It asks for the lines after one said before it existed: it gets its own join on,
    // after the mark that it asked for more than it may have.
    let (mut ws, first) = Resumable::back(&server, &token, &earlier);
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

#[test]
fn a_resume_from_before_lines_it_was_handed_replays_at_most_a_send_buffer_of_them() {
    // Twice the largest send buffer the kernel grows a socket to (tcp_wmem's third figure,
    // 4 MiB by default) said after the session's join, all read by it, in a log that keeps
    // all of it. The kernel may have held back at most one send buffer, so the session was
    // owed nothing older than that behind its last line.
    let send_buffer_most = largest_send_buffer();
    let lines = 2 * send_buffer_most / 1000;
    let keep = (4 * send_buffer_most).to_string();
    let server = Server::start(&["--rate-limit", "0", "--max-lag-bytes", &keep]);
    let mut witness = server.join();
    let mut page = Resumable::new_session(&server);
    witness.until(&format!(" .... {} has joined.", page.nickname));
    let joined_at = page.position.clone();
    let line = "o".repeat(1000);
    let said = format!("{}: {line}", witness.nickname);
    for _ in 0..lines {
        witness.say(&line);
        assert!(witness.line() == said);
        assert!(page.line() == said);
    }
    let (token, nickname, position) = page.cut();
    // It claims to have got nothing since its join.
    let (mut ws, first) = Resumable::back(&server, &token, &joined_at);
    let replayed: usize = first
        .strip_prefix("resumed ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{first:?}"));
    let most = send_buffer_most / 1000 + 1;
    assert!(replayed <= most, "replayed {replayed} of {lines}");
    assert_eq!(read_text(&mut ws), "missed");
    let mut back = Resumable {
        ws,
        token,
        nickname,
        position,
    };
    for _ in 0..replayed {
        assert!(back.line() == said);
    }
}

#[test]
fn forty_resumes_of_one_token_replay_at_most_its_own_join_each() {
    // Fifty lines of 1000 bytes said before the session: before, each resume from the
    // first of them replayed all 50 KB.
    let server = Server::start(&["--rate-limit", "0"]);
    let (_other, _witness, earlier) = numbered_history(&server, 50, 1000);
    let page = Resumable::new_session(&server);
    let (token, _, _) = page.cut();
    let started = Instant::now();
    let (mut replayed, mut too_often) = (0, 0);
    for i in 0..40 {
        let mut ws = handshake(&server.ws_url("/"), &[SUBPROTOCOL]).expect("handshake");
        ws.send(Message::text(format!("resume {token} {earlier}")))
            .unwrap();
        match ws.read() {
            Ok(Message::Text(first)) => {
                let n: u64 = first
                    .strip_prefix("resumed ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("resume {i}: {first:?}"));
                assert!(n <= 1, "resume {i} replays {n} lines");
                replayed += n;
            }
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(
                    (u16::from(frame.code), frame.reason.as_str()),
                    (1013, "resuming too often; try again later"),
                    "resume {i}"
                );
                too_often += 1;
            }
            other => panic!("resume {i}: {other:?}"),
        }
        if let tungstenite::stream::MaybeTlsStream::Plain(socket) = ws.get_ref() {
            common::resumable::reset(socket);
        }
    }
    assert!(replayed <= 40);
    // A burst of two, then one a second: forty in a row within a second meet the rate.
    if started.elapsed() < Duration::from_secs(1) {
        assert!(too_often >= 37, "{too_often} refused");
    }
}
