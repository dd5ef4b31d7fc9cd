//! The admin port: `/metrics` an operator's Prometheus reads, `/healthz` and `/readyz` for a
//! load balancer or an orchestrator, each checked against what really happened: counters
//! that move when their cause happens, a stuck room thread noticed within its bound, and a
//! server that is full or stopping no longer ready.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

/// README: `/healthz` fails once the room thread has not answered for 3 s; it looks every
/// second (the room's pulse).
const HEALTH_BOUND: Duration = Duration::from_secs(4);
/// What a loaded two-core machine may add to a promised time.
const MARGIN: Duration = Duration::from_secs(1);

fn admin(server: &Server) -> SocketAddr {
    server.admin.expect("the server printed its admin address")
}

/// Every sample of `/metrics`, by its name and labels as written.
fn scrape(server: &Server) -> HashMap<String, f64> {
    let (status, _, body) = get(admin(server), "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(server: &Server, sample: &str) -> f64 {
    scrape(server).get(sample).copied().unwrap_or(f64::NAN)
}

/// promtool, from Debian's prometheus package (`make test` installs it), checks the format
/// as Prometheus reads it. Without it the check is skipped loudly, or fails under CI.
fn promtool_check(exposition: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var("CI").map_or(true, |ci| ci.is_empty()),
            "promtool not found under CI: make test installs Debian's prometheus package"
        );
        eprintln!("SKIPPED: promtool not found; make test installs it");
        return;
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(exposition.as_bytes()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

#[test]
fn the_metrics_pass_promtool_and_count_what_happened() {
    let server = Server::start(&["--admin-port", "0", "--max-clients-per-address", "7"]);
    let mut clients: Vec<Client> = (0..7).map(|_| server.join()).collect();
    settle(&mut clients);
    // Three more from the same address: each refused with 429 before its upgrade.
    for _ in 0..3 {
        let refused = handshake(&server.ws_url("/"), &[]);
        assert!(refused.is_err(), "over the address's share");
    }
    // Two leave with a close frame, one loses its connection without one.
    for mut client in clients.drain(..2) {
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        client.ws.close(Some(bye)).unwrap();
        let _ = client.ws.flush();
        let _ = client.ws.read();
    }
    let lost = clients.remove(0);
    if let tungstenite::stream::MaybeTlsStream::Plain(socket) = lost.ws.get_ref() {
        reset_on_close(socket);
    }
    drop(lost);
    let want = [
        ("threadchat_joins_total", 7.0),
        ("threadchat_handshakes_refused_total{status=\"429\"}", 3.0),
        ("threadchat_handshakes_refused_total{status=\"503\"}", 0.0),
        ("threadchat_leaves_total{cause=\"close\"}", 2.0),
        ("threadchat_leaves_total{cause=\"lost\"}", 1.0),
        ("threadchat_clients{dialect=\"plain\"}", 4.0),
        ("threadchat_nicknames", 4.0),
    ];
    eventually("the counters to say what happened", || {
        let now = scrape(&server);
        want.iter().all(|(name, v)| now.get(*name) == Some(v))
    });
    let now = scrape(&server);
    // One line said is one line more in the log.
    let lines = now["threadchat_lines_total"];
    clients[0].say("counted");
    let said = format!("{}: counted", clients[0].nickname);
    clients[0].until(&said);
    assert_eq!(value(&server, "threadchat_lines_total"), lines + 1.0);
    assert!(now["process_resident_memory_bytes"] > 0.0);
    assert!(
        now["process_open_fds"] >= 4.0,
        "three listeners and four clients"
    );
    let (_, _, exposition) = get(admin(&server), "/metrics");
    promtool_check(&exposition);
}

#[test]
fn sends_and_bytes_move_with_each_line_and_only_then() {
    let server = Server::start(&["--admin-port", "0"]);
    let mut clients = vec![server.join(), server.join(), server.join()];
    settle(&mut clients);
    // One leaves: its writer keeps its place free for the next, and counts it no more.
    drop(clients.pop());
    let sum = |prefix: &str| -> f64 {
        scrape(&server)
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    // Its leave has gone to the others once the writers forget it and send no more.
    eventually("the writers to count two clients", || {
        sum("threadchat_writer_clients") == 2.0
    });
    let mut last = sum("threadchat_sends_total");
    eventually("the leave's sends to be over", || {
        std::thread::sleep(Duration::from_millis(200));
        let now = sum("threadchat_sends_total");
        std::mem::replace(&mut last, now) == now
    });
    let (sends, bytes) = (
        sum("threadchat_sends_total"),
        sum("threadchat_sent_bytes_total"),
    );
    let delays = value(&server, "threadchat_delivery_delay_seconds_count");
    assert_eq!(
        sum("threadchat_sends_total"),
        sends,
        "nothing said, nothing sent"
    );
    clients[0].say("hello");
    let line = format!("{}: hello", clients[0].nickname);
    for client in &mut clients {
        client.until(&line);
    }
    // One frame of the line to each of the two: at least its bytes twice.
    eventually("the sends to be counted", || {
        sum("threadchat_sent_bytes_total") >= bytes + 2.0 * (line.len() + 2) as f64
    });
    assert!(sum("threadchat_sends_total") >= sends + 2.0);
    // Both clients belong to a writer, as of its last pass; the third is forgotten.
    assert_eq!(sum("threadchat_writer_clients"), 2.0);
    // The line's delay, once for each of the two, in a histogram Prometheus can read.
    let now = scrape(&server);
    assert!(now["threadchat_delivery_delay_seconds_count"] >= delays + 2.0);
    assert!(now["threadchat_delivery_delay_seconds_sum"] > 0.0);
    let inf = now["threadchat_delivery_delay_seconds_bucket{le=\"+Inf\"}"];
    assert_eq!(inf, now["threadchat_delivery_delay_seconds_count"]);
    // Two clients and one line: no writer is busy enough to hold lines back to gather them.
    assert_eq!(sum("threadchat_writer_gathering"), 0.0);
}

#[test]
fn healthz_fails_within_its_bound_while_the_room_thread_is_stuck_and_recovers() {
    let server = Server::start(&["--admin-port", "0"]);
    assert_eq!(get(admin(&server), "/healthz").0, 200);
    let (status, _, body) = get(admin(&server), "/debug/pause-room?ms=7000");
    assert_eq!(status, 200, "{body}");
    let stuck_at = Instant::now();
    let deadline = stuck_at + HEALTH_BOUND + MARGIN;
    loop {
        let (status, _, body) = get(admin(&server), "/healthz");
        if status == 503 {
            assert!(body.contains("room thread"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still healthy after {:?}",
            stuck_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Not ready either while it is stuck.
    assert_eq!(get(admin(&server), "/readyz").0, 503);
    let deadline = Instant::now() + Duration::from_secs(7) + MARGIN;
    while get(admin(&server), "/healthz").0 != 200 {
        assert!(Instant::now() < deadline, "never healthy again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readyz_says_503_when_full_and_while_stopping() {
    let mut server = Server::start(&["--admin-port", "0", "--max-clients", "2"]);
    let addr = admin(&server);
    assert_eq!(get(addr, "/readyz").0, 200);
    let mut first = server.join();
    let second = server.join();
    let (status, _, body) = get(addr, "/readyz");
    assert_eq!((status, body.trim()), (503, "full: 2 of 2 clients"));
    drop(second);
    eventually("ready again once a client left", || {
        get(addr, "/readyz").0 == 200
    });
    // The connected client keeps the server stopping a moment: it is not ready meanwhile.
    signal_process(server.pid(), "TERM");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let Ok(socket) = TcpStream::connect(addr) else {
            panic!("the server went without saying it was stopping");
        };
        let (status, _, body) = http_over(
            socket,
            &format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        );
        if status == 503 {
            assert_eq!(body.trim(), "stopping");
            break;
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
    }
    let _ = first.ws.read();
    assert!(server.signal_and_wait("TERM").success() || !server.is_running());
}

#[test]
fn idle_connections_cannot_keep_the_admin_port_from_answering() {
    let server = Server::start(&["--admin-port", "0"]);
    let addr = admin(&server);
    // Eight connections that never send a request: every place the port has. A script
    // reopens each one the port closes.
    let mut idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for _ in 0..3 {
        let asked = Instant::now();
        let (status, body, _) = get(addr, "/healthz");
        // Answered, with the health, at once: not after an idle one's 2 s.
        assert_eq!(status, 200, "{body}");
        assert!(asked.elapsed() < MARGIN, "took {:?}", asked.elapsed());
        // The one that waited longest made room: closed unanswered.
        let mut oldest = idle.remove(0);
        oldest.set_read_timeout(Some(MARGIN)).unwrap();
        let mut byte = [0u8; 1];
        match oldest.read(&mut byte) {
            Ok(0) => {}
            other => panic!("the longest waiting connection was not closed: {other:?}"),
        }
        idle.push(TcpStream::connect(addr).unwrap());
    }
    // Nobody was refused: room was made each time.
    assert_eq!(value(&server, "threadchat_admin_refused_total"), 0.0);
}

#[test]
fn the_admin_port_is_off_by_default_and_the_page_port_does_not_serve_it() {
    let server = Server::start(&[]);
    assert!(server.admin.is_none());
    assert!(!server.startup.iter().any(|l| l.contains("admin")));
    let (status, _, _) = get(server.http, "/metrics");
    assert_eq!(status, 404);
    assert_eq!(get(server.http, "/healthz").0, 404);
}

#[test]
fn systemd_hears_ready_then_a_watchdog_fed_only_while_the_room_answers() {
    let dir = std::env::temp_dir().join(format!("threadchat-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let socket = std::os::unix::net::UnixDatagram::bind(&dir).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let path = dir.to_string_lossy().into_owned();
    let server = Server::start_with_env(&[("NOTIFY_SOCKET", &path)], &["--admin-port", "0"]);
    let heard = |within: Duration| -> Option<String> {
        socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let mut first = Vec::new();
    while !first.contains(&"READY=1".to_owned()) {
        first.push(heard(PATIENCE).expect("systemd told it is ready"));
    }
    assert_eq!(heard(PATIENCE).as_deref(), Some("WATCHDOG=1"));
    // The room stuck for 4 s: no watchdog meanwhile (its pulse is every second).
    assert_eq!(get(admin(&server), "/debug/pause-room?ms=4000").0, 200);
    while heard(Duration::from_millis(200)).is_some() {}
    let quiet_from = Instant::now();
    let next = heard(PATIENCE);
    assert_eq!(next.as_deref(), Some("WATCHDOG=1"));
    assert!(
        quiet_from.elapsed() > Duration::from_secs(2),
        "fed while the room was stuck"
    );
    let _ = std::fs::remove_file(&dir);
}

/// A real Prometheus (Debian's), scraping the admin port every second into a folder of its
/// own; stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    api: SocketAddr,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn scraping(target: SocketAddr) -> Option<Prometheus> {
        if Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("CI").map_or(true, |ci| ci.is_empty()),
                "prometheus not found under CI: make test installs Debian's prometheus package"
            );
            eprintln!("SKIPPED: prometheus not found; make test installs it");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("threadchat-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: threadchat\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // Prometheus takes no port 0: a port free a moment ago is the nearest.
        let api = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Some(Prometheus { child, api, dir })
    }

    /// The value of `query` as Prometheus has it now, if it has one.
    fn query(&self, query: &str) -> Option<f64> {
        let socket = TcpStream::connect(self.api).ok()?;
        let (status, _, body) = http_over(
            socket,
            &format!(
                "GET /api/v1/query?query={query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.api
            ),
        );
        if status != 200 {
            return None;
        }
        // {"status":"success","data":{"resultType":"vector","result":[{"metric":{..},"value":[t,"7"]}]}}
        let value = body.split("\"value\":[").nth(1)?;
        let number = value.split('"').nth(1)?;
        number.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_real_prometheus_scrapes_what_happened() {
    let server = Server::start(&["--admin-port", "0", "--max-clients-per-address", "7"]);
    let Some(prometheus) = Prometheus::scraping(admin(&server)) else {
        return;
    };
    let mut clients: Vec<Client> = (0..7).map(|_| server.join()).collect();
    settle(&mut clients);
    for _ in 0..3 {
        assert!(
            handshake(&server.ws_url("/"), &[]).is_err(),
            "over the share"
        );
    }
    let joins = "threadchat_joins_total";
    let refused = "threadchat_handshakes_refused_total%7Bstatus%3D%22429%22%7D";
    // Prometheus starts, then scrapes every second.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus.query(joins) != Some(7.0) || prometheus.query(refused) != Some(3.0) {
        assert!(
            Instant::now() < deadline,
            "Prometheus has {:?} joins and {:?} refused",
            prometheus.query(joins),
            prometheus.query(refused)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Why a connection ended, as `/metrics` names it (README, "Seeing inside").
const CAUSES: [&str; 11] = [
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

/// `threadchat_connections_ended_total{cause=...}`.
fn ended(server: &Server, cause: &str) -> f64 {
    value(
        server,
        &format!("threadchat_connections_ended_total{{cause=\"{cause}\"}}"),
    )
}

#[test]
fn each_ending_and_each_refusal_is_counted_under_its_own_cause_and_no_other() {
    const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);
    let server = Server::start(&[
        "--admin-port",
        "0",
        "--max-message-bytes",
        "1024",
        "--rate-limit",
        "2",
        "--flood-close",
        "1",
    ]);
    let mut witness = server.join();
    let mut expected: HashMap<&str, f64> = HashMap::new();
    let check = |cause: &'static str, expected: &mut HashMap<&str, f64>| {
        *expected.entry(cause).or_default() += 1.0;
        eventually(&format!("the {cause} ending to be counted"), || {
            CAUSES
                .iter()
                .all(|c| ended(&server, c) == expected.get(c).copied().unwrap_or(0.0))
        });
    };
    // A close from the client.
    let mut client = server.join();
    client.ws.close(None).unwrap();
    let _ = client.ws.flush();
    let _ = client.ws.read();
    check("close", &mut expected);
    // A reset.
    let client = server.join();
    if let tungstenite::stream::MaybeTlsStream::Plain(socket) = client.ws.get_ref() {
        reset_on_close(socket);
    }
    drop(client);
    check("lost", &mut expected);
    // Too big, invalid UTF-8, an unmasked frame.
    let mut raw = RawClient::connect(server.ws);
    raw.send_frame(0x81, MASK, &vec![b'x'; 2000]);
    assert_eq!(raw.close_code().0, 1009);
    check("too_big", &mut expected);
    let mut raw = RawClient::connect(server.ws);
    raw.send_frame(0x81, MASK, &[b'h', 0xff, 0xfe]);
    assert_eq!(raw.close_code().0, 1007);
    check("invalid_utf8", &mut expected);
    let mut raw = RawClient::connect(server.ws);
    raw.send_frame(0x81, None, b"unmasked");
    assert_eq!(raw.close_code().0, 1002);
    check("protocol_error", &mut expected);
    // A flood: lines refused with a notice, then the close.
    let mut flooder = server.join();
    let refused = "threadchat_lines_refused_total{why=\"flood\"}";
    let before = value(&server, refused);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match flooder.ws.send(tungstenite::Message::text("spam")) {
            Ok(()) => {}
            Err(_) => break,
        }
        if matches!(
            flooder.ws.read(),
            Ok(tungstenite::Message::Close(_)) | Err(_)
        ) {
            break;
        }
        assert!(Instant::now() < deadline, "never closed for flooding");
    }
    check("flood", &mut expected);
    assert!(
        value(&server, refused) > before,
        "the refused lines were counted"
    );
    // Every other cause stayed where it was, and the witness is still here.
    for cause in [
        "silence",
        "too_slow",
        "write_timeout",
        "shutdown",
        "going_away",
    ] {
        assert_eq!(ended(&server, cause), 0.0, "{cause}");
    }
    witness.say("still here");
    witness.until(&format!("{}: still here", witness.nickname));
    // The page port's answers by status.
    let (status, _, _) = get(server.http, "/");
    assert_eq!(status, 200);
    assert_eq!(get(server.http, "/nowhere").0, 404);
    let post = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(http(server.http, post).0, 405);
    eventually("the page answers to be counted", || {
        let now = scrape(&server);
        ["200", "404", "405"].iter().all(|s| {
            now.get(&format!("threadchat_page_answers_total{{status=\"{s}\"}}")) == Some(&1.0)
        })
    });
}

#[test]
fn resumes_are_counted_by_how_they_ended() {
    use common::resumable::{Resumable, SUBPROTOCOL};
    let server = Server::start(&["--admin-port", "0"]);
    let resumes = |how: &str| {
        value(
            &server,
            &format!("threadchat_resumes_total{{how=\"{how}\"}}"),
        )
    };
    let page = Resumable::new_session(&server);
    let (token, _, position) = page.cut();
    // Back, once; the same token again at once, and again: the third is one too often.
    let (_ws, first) = Resumable::back(&server, &token, &position);
    assert_eq!(first, "resumed 0");
    eventually("one resume counted back", || resumes("back") == 1.0);
    let mut too_often = 0;
    for _ in 0..3 {
        let mut ws = handshake(&server.ws_url("/"), &[SUBPROTOCOL]).expect("handshake");
        ws.send(tungstenite::Message::text(format!(
            "resume {token} {position}"
        )))
        .unwrap();
        if let Ok(tungstenite::Message::Close(_)) = ws.read() {
            too_often += 1;
        }
    }
    assert!(too_often >= 1, "a burst of two, then once a second");
    // A token nobody has: a fresh session.
    let (_ws, first) = Resumable::back(&server, &"0".repeat(32), "1");
    assert_eq!(first, "missed");
    eventually("every resume counted by how it ended", || {
        resumes("too_often") == too_often as f64
            && resumes("unknown") == 1.0
            && resumes("back") == 4.0 - too_often as f64
    });
    assert_eq!(resumes("unreachable"), 0.0);
}

#[test]
fn each_handshake_refusal_is_counted_under_its_status_and_silence_and_going_away_as_theirs() {
    let server = Server::start(&[
        "--admin-port",
        "0",
        "--max-clients",
        "2",
        "--ping-interval",
        "0.1",
        "--pong-timeout",
        "0.5",
    ]);
    let url = server.ws_url("/");
    let status = |headers: &[(&str, &str)]| match handshake(&url, headers) {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status(&[("Origin", "http://evil.example")]), 403);
    let plain = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.ws
    );
    assert_eq!(http(server.ws, &plain).0, 426);
    let bad = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.ws
    );
    assert_eq!(http(server.ws, &bad).0, 400);
    // The refused ones' threads let go of their seats as they end.
    eventually("every seat free again", || {
        value(&server, "threadchat_seats") == 0.0
    });
    // A peer that never answers a ping holds one seat until it has been silent past the
    // pong timeout; a client holds the other; a third is refused with 503.
    let _dead = RawClient::connect(server.ws);
    let held = server.join();
    let full = handshake(&url, &[]);
    assert!(
        matches!(&full, Err(tungstenite::Error::Http(r)) if r.status() == 503),
        "{full:?}"
    );
    drop(held);
    let ended = |cause: &str| {
        value(
            &server,
            &format!("threadchat_connections_ended_total{{cause=\"{cause}\"}}"),
        )
    };
    eventually("the silent peer dropped", || ended("silence") == 1.0);
    eventually("its seat free again", || {
        value(&server, "threadchat_seats") == 0.0
    });
    // A client that goes away with 1001.
    let mut away = server.join();
    let bye = CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    };
    away.ws.close(Some(bye)).unwrap();
    let _ = away.ws.flush();
    let _ = away.ws.read();
    eventually("each cause counted as itself", || {
        let now = scrape(&server);
        let refused = |s: &str| {
            now.get(&format!(
                "threadchat_handshakes_refused_total{{status=\"{s}\"}}"
            ))
            .copied()
        };
        refused("403") == Some(1.0)
            && refused("426") == Some(1.0)
            && refused("400") == Some(1.0)
            && refused("503") == Some(1.0)
            && refused("429") == Some(0.0)
            && ended("going_away") == 1.0
            && ended("silence") == 1.0
    });
}

#[test]
fn a_session_whose_window_ends_is_counted_once_as_window_ended() {
    use common::resumable::Resumable;
    let server = Server::start(&["--admin-port", "0", "--resume-window", "3"]);
    let mut witness = server.join();
    let page = Resumable::new_session(&server);
    let (_, nickname, _) = page.cut();
    // Waiting for its client, as of the room's next pulse (every second, in a 3 s window).
    eventually("one session waiting", || {
        value(&server, "threadchat_sessions_waiting") == 1.0
    });
    witness.until(&format!(" .... {nickname} has left."));
    let ended = "threadchat_leaves_total{cause=\"window_ended\"}";
    eventually("the window's end counted", || value(&server, ended) == 1.0);
    assert_eq!(
        value(&server, "threadchat_leaves_total{cause=\"lost\"}"),
        1.0
    );
}

#[test]
fn the_watchdog_is_fed_while_the_writers_are_busy() {
    let dir = std::env::temp_dir().join(format!("threadchat-busy-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let socket = std::os::unix::net::UnixDatagram::bind(&dir).unwrap();
    let path = dir.to_string_lossy().into_owned();
    let server = Server::start_with_env(
        &[("NOTIFY_SOCKET", &path)],
        &["--admin-port", "0", "--rate-limit", "0"],
    );
    let mut readers: Vec<Client> = (0..20).map(|_| server.join()).collect();
    settle(&mut readers);
    let mut sender = readers.remove(0);
    // Every reader reads on a thread of its own, so that none is evicted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = readers
        .into_iter()
        .map(|mut client| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if client.ws.read().is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    // Drain what came before the flood.
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    while socket.recv(&mut buf).is_ok() {}
    // Lines as fast as they go for 3 s: the writers are in a pass most of that time.
    let flood_until = Instant::now() + Duration::from_secs(3);
    let mut fed = 0;
    while Instant::now() < flood_until {
        for _ in 0..50 {
            let _ = sender.ws.write(tungstenite::Message::text("busy"));
        }
        let _ = sender.ws.flush();
        while let Ok(n) = socket.recv(&mut buf) {
            if &buf[..n] == b"WATCHDOG=1" {
                fed += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(server);
    for thread in threads {
        let _ = thread.join();
    }
    let _ = std::fs::remove_file(&dir);
    // A pulse a second: at least two in three seconds, busy writers or not.
    assert!(fed >= 2, "the watchdog was fed {fed} times in 3 s");
}
