//! The suite itself: compiled only with the `redis` feature, from `../rolling_restart.rs`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::redis_server::{instance_id, Redis};
use crate::common::resumable::{Socket, SUBPROTOCOL};
use crate::common::*;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

const CLIENTS: usize = 200;
/// Clients that also talk, one line at a time, throughout.
const SPEAKERS: usize = 4;
/// How long the whole restart may take before the test gives up.
const WHOLE_RUN: Duration = Duration::from_secs(120);
/// A reconnecting client waits a random time up to this, as the page does (full jitter), so
/// that 100 clients do not all come back at the same instant.
const RETRY_MOST: Duration = Duration::from_millis(500);
/// How often a client that waits for nothing looks at whether it should stop.
const POLL: Duration = Duration::from_millis(50);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// nginx in front of both instances, with the cluster block of docs/DEPLOY.md.
struct Nginx {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Nginx {
    fn start(pages: [u16; 2], sockets: [u16; 2]) -> Option<Nginx> {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(nginx) = nginx else {
            assert!(
                std::env::var("CI").unwrap_or_default().is_empty(),
                "nginx is missing; make test installs it"
            );
            eprintln!("WARNING: nginx not found; the rolling restart test is SKIPPED");
            return None;
        };
        let deploy =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/DEPLOY.md"))
                .expect("docs/DEPLOY.md");
        let block = deploy
            .split("```nginx\n")
            .find(|b| b.contains("upstream threadchat_ws"))
            .and_then(|b| b.split("```").next())
            .expect("a cluster nginx block in docs/DEPLOY.md");
        let dir = TempDir::new();
        // nginx cannot be given port 0, so it gets a port that was free a moment ago; should
        // another process take it first, nginx gives up, and another port is tried.
        let mut tried = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            match Nginx::try_start(nginx, block, pages, sockets, port, &dir) {
                Ok(child) => {
                    return Some(Nginx {
                        child,
                        port,
                        _dir: dir,
                    })
                }
                Err(why) => tried.push(why),
            }
        }
        panic!("nginx did not start: {tried:?}");
    }

    /// nginx listening on `port`, once it has written its pid file: it writes it after it
    /// has bound every listening socket, so the port is its own.
    fn try_start(
        nginx: &str,
        block: &str,
        pages: [u16; 2],
        sockets: [u16; 2],
        port: u16,
        dir: &TempDir,
    ) -> Result<Child, String> {
        let site: String = block
            .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port};"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", pages[0]))
            .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", pages[1]))
            .replace("127.0.0.1:12345", &format!("127.0.0.1:{}", sockets[0]))
            .replace("127.0.0.1:12346", &format!("127.0.0.1:{}", sockets[1]))
            .lines()
            .filter(|l| !l.trim_start().starts_with("ssl_certificate"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            site.contains(&format!("127.0.0.1:{}", sockets[1])),
            "{site}"
        );
        let root = dir.path.display().to_string();
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let conf = format!(
            "{user}\ndaemon off;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n access_log off;\n client_body_temp_path {root}/body;\n\
             proxy_temp_path {root}/proxy;\n fastcgi_temp_path {root}/fastcgi;\n\
             uwsgi_temp_path {root}/uwsgi;\n scgi_temp_path {root}/scgi;\n{site}\n}}\n"
        );
        std::fs::write(format!("{root}/nginx.conf"), conf).unwrap();
        let pid_file = format!("{root}/nginx.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut child = Command::new(nginx)
            .args(["-p", &root, "-e", &format!("{root}/error.log")])
            .args(["-c", &format!("{root}/nginx.conf")])
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx");
        let own = child.id().to_string();
        // nginx tries a taken port for about 2.5 s before it gives up.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let written = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if written.trim() == own {
                return Ok(child);
            }
            if let Some(status) = child.try_wait().expect("nginx's status") {
                let log = std::fs::read_to_string(format!("{root}/error.log")).unwrap_or_default();
                return Err(format!("nginx on {port} exited ({status}): {log}"));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("nginx on {port} did not start within {PATIENCE:?}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "threadchat-rolling-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn rand_suffix() -> u64 {
    rand::random()
}

/// What the test and every client thread share.
struct Shared {
    url: String,
    /// Set once the test has seen everything it wanted: clients read up to the end line.
    ending: AtomicBool,
    /// Clients connected right now.
    connected: AtomicUsize,
    /// Resumes, over all clients.
    resumes: AtomicUsize,
    /// Resumes answered with anything but `resumed N`: the test has failed already.
    refused: AtomicUsize,
}

/// What one client saw, for the checks at the end.
struct Seen {
    nickname: String,
    /// Every room line from the start line to the end line, positions stripped.
    transcript: Vec<String>,
    /// Anything that is not the resume of its own session: a `missed`, a new `session`.
    surprises: Vec<String>,
    /// A speaker's lines whose connection closed before it heard them: placed or not,
    /// nobody can say; never said again (the next has the next number).
    in_doubt: Vec<usize>,
}

/// One resumable client: joins, reads, and when its connection closes, comes back through
/// nginx with its token and position. A speaker also says `speaker-S k`, k = 0, 1, ...,
/// one at a time: the next once it has heard the last.
fn client(shared: Arc<Shared>, speaker: Option<usize>) -> Seen {
    let mut ws = connect_until(&shared.url);
    ws.send(Message::text("new")).unwrap();
    let token = read_text(&mut ws)
        .strip_prefix("session ")
        .expect("a session")
        .to_owned();
    let (mut position, join) = numbered(&read_text(&mut ws));
    let nickname = join
        .strip_prefix(" .... ")
        .and_then(|r| r.strip_suffix(" has joined."))
        .expect("its join")
        .to_owned();
    poll(&ws);
    shared.connected.fetch_add(1, Ordering::SeqCst);
    let mut seen = Seen {
        nickname: nickname.clone(),
        transcript: Vec::new(),
        surprises: Vec::new(),
        in_doubt: Vec::new(),
    };
    let (mut recording, mut next_line, mut heard_last) = (false, 0usize, true);
    // Lines the instance said it replays after a resume, still to read.
    let mut replay: Option<usize> = None;
    let mine = |k: usize| format!("{nickname}: speaker-{} {k}", speaker.unwrap_or(0));
    loop {
        let may_speak = recording && heard_last && !shared.ending.load(Ordering::SeqCst);
        if let Some(s) = speaker.filter(|_| may_speak) {
            let line = Message::text(format!("speaker-{s} {next_line}"));
            heard_last = ws.send(line).is_err();
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                let text = text.as_str();
                if text.starts_with("- ") {
                    seen.surprises.push(text.to_owned());
                    continue;
                }
                let (at, line) = numbered(text);
                position = at;
                if line.ends_with(": start") {
                    recording = true;
                }
                if recording {
                    seen.transcript.push(line.clone());
                }
                if speaker.is_some() && line == mine(next_line) {
                    next_line += 1;
                    heard_last = true;
                }
                replay = replay.map(|n| n.saturating_sub(1));
                if replay == Some(0) {
                    replay = None;
                    given_up(&mut seen, &mut next_line, &mut heard_last, speaker);
                }
                if line.ends_with(": end") {
                    return seen;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                // Closed (1012) or cut: come back as itself.
                shared.connected.fetch_sub(1, Ordering::SeqCst);
                let (back, missed) = resume(&shared, &token, &position, &mut seen);
                ws = back;
                shared.connected.fetch_add(1, Ordering::SeqCst);
                // A line said but not yet heard may be among those replayed.
                replay = Some(missed).filter(|n| *n > 0);
                if replay.is_none() {
                    given_up(&mut seen, &mut next_line, &mut heard_last, speaker);
                }
            }
        }
    }
}

/// After a resume and its replay, a speaker's line still unheard is in doubt: it may yet
/// arrive (an instance that was stopping may place it late) or never. It says the next.
fn given_up(seen: &mut Seen, next_line: &mut usize, heard_last: &mut bool, speaker: Option<usize>) {
    if speaker.is_some() && !*heard_last {
        seen.in_doubt.push(*next_line);
        *next_line += 1;
        *heard_last = true;
    }
}

/// Reads from now on return within [`POLL`], so that a speaker can speak in between.
fn poll(ws: &Socket) {
    if let MaybeTlsStream::Plain(socket) = ws.get_ref() {
        socket.set_read_timeout(Some(POLL)).unwrap();
    }
}

/// `<position> <line>`, split.
fn numbered(text: &str) -> (String, String) {
    let (at, line) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("no position in {text:?}"));
    (at.to_owned(), line.to_owned())
}

/// A connection through nginx, retried with jitter until one opens.
fn connect_until(url: &str) -> Socket {
    let deadline = Instant::now() + WHOLE_RUN;
    loop {
        if let Ok(ws) = handshake(url, &[SUBPROTOCOL]) {
            return ws;
        }
        assert!(Instant::now() < deadline, "no connection through {url}");
        thread::sleep(jitter());
    }
}

fn jitter() -> Duration {
    RETRY_MOST.mul_f64(rand::random::<f64>())
}

/// Comes back with `token`: retried until an instance answers. Returns the connection and
/// how many missed lines follow.
fn resume(shared: &Shared, token: &str, position: &str, seen: &mut Seen) -> (Socket, usize) {
    loop {
        thread::sleep(jitter());
        let mut ws = connect_until(&shared.url);
        if ws
            .send(Message::text(format!("resume {token} {position}")))
            .is_err()
        {
            continue;
        }
        let first = loop {
            match ws.read() {
                Ok(Message::Text(text)) => break Some(text.as_str().to_owned()),
                Ok(_) => {}
                Err(_) => break None,
            }
        };
        poll(&ws);
        match first {
            Some(word) if word.starts_with("resumed ") => {
                shared.resumes.fetch_add(1, Ordering::SeqCst);
                return (ws, word["resumed ".len()..].parse().unwrap_or(0));
            }
            Some(other) => {
                shared.refused.fetch_add(1, Ordering::SeqCst);
                seen.surprises.push(other);
                return (ws, 0);
            }
            None => continue, // that instance was stopping: try again
        }
    }
}

fn wait_for(shared: &Shared, what: &str, deadline: Instant, condition: impl Fn() -> bool) {
    while !condition() {
        let refused = shared.refused.load(Ordering::SeqCst);
        assert_eq!(refused, 0, "{refused} clients could not resume");
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what} ({} connected, {} resumes)",
            shared.connected.load(Ordering::SeqCst),
            shared.resumes.load(Ordering::SeqCst)
        );
        thread::sleep(POLL);
    }
}

#[test]
fn a_rolling_restart_behind_nginx_is_noticed_by_nobody() {
    let Some(redis) = Redis::start() else { return };
    let args = ["--rate-limit", "0", "--redis", &redis.url()];
    // First on free ports; a restarted instance takes its predecessor's ports again, which
    // nginx knows.
    let mut instances = [Server::start(&args), Server::start(&args)];
    let pages = [instances[0].http.port(), instances[1].http.port()];
    let sockets = [instances[0].ws.port(), instances[1].ws.port()];
    let Some(nginx) = Nginx::start(pages, sockets) else {
        return;
    };
    let start = |i: usize| Server::start_on(pages[i], sockets[i], &args);
    let deadline = Instant::now() + WHOLE_RUN;
    let shared = Arc::new(Shared {
        url: nginx.ws_url(),
        ending: AtomicBool::new(false),
        connected: AtomicUsize::new(0),
        resumes: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
    });
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let shared = shared.clone();
            let speaker = (i < SPEAKERS).then_some(i);
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || client(shared, speaker))
                .unwrap()
        })
        .collect();
    wait_for(&shared, "every client to join", deadline, || {
        shared.connected.load(Ordering::SeqCst) == CLIENTS
    });
    // A plain client that stays out of it says when recording starts and ends: every
    // client has joined by then, and it is on whichever instance nginx picks, so it is
    // restarted too; it speaks through a connection of its own each time.
    let say = |text: &str| {
        let mut witness = Client::connect(&nginx.ws_url());
        witness.say(text);
        let want = format!("{}: {text}", witness.nickname);
        witness.until(&want);
    };
    say("start");
    let mut redis_connection = redis.connection();
    #[allow(clippy::needless_range_loop)] // instance i is replaced by a new one on its ports
    for i in 0..2 {
        // Its resumable clients, as Redis counts the names it holds that have sessions.
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("threadchat:held:{}", instance_id(&instances[i])))
            .query(&mut redis_connection)
            .unwrap();
        let sessions: std::collections::HashSet<String> = redis::cmd("HKEYS")
            .arg("threadchat:session-names")
            .query(&mut redis_connection)
            .unwrap();
        let held = names.iter().filter(|n| sessions.contains(*n)).count();
        let before = shared.resumes.load(Ordering::SeqCst);
        assert!(instances[i].signal_and_wait("TERM").success());
        let what = format!("{held} clients of instance {i} to resume on the other");
        wait_for(&shared, &what, deadline, || {
            shared.resumes.load(Ordering::SeqCst) >= before + held
                && shared.connected.load(Ordering::SeqCst) == CLIENTS
        });
        instances[i] = start(i);
    }
    wait_for(&shared, "every client back", deadline, || {
        shared.connected.load(Ordering::SeqCst) == CLIENTS
    });
    shared.ending.store(true, Ordering::SeqCst);
    say("end");
    let seen: Vec<Seen> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let resumes = shared.resumes.load(Ordering::SeqCst);
    assert!(
        resumes >= CLIENTS,
        "only {resumes} resumes for {CLIENTS} clients"
    );
    for s in &seen {
        assert!(s.surprises.is_empty(), "{}: {:?}", s.nickname, s.surprises);
    }
    let transcript = &seen[0].transcript;
    for s in &seen {
        assert_eq!(&s.transcript, transcript, "{} heard otherwise", s.nickname);
    }
    // Only the witness's joins and leaves (it is a plain client that comes and goes);
    // none of the 200.
    let names: std::collections::HashSet<&str> = seen.iter().map(|s| s.nickname.as_str()).collect();
    assert_eq!(names.len(), CLIENTS, "names are unique and kept");
    for line in transcript {
        if let Some(who) = line
            .strip_prefix(" .... ")
            .and_then(|r| r.split_once(' ').map(|(n, _)| n))
        {
            assert!(!names.contains(who), "heard {line:?}");
        }
    }
    // Each speaker's lines: once each, in order, none missing but those in doubt (at most
    // one per restart it went through).
    for (i, s) in seen.iter().take(SPEAKERS).enumerate() {
        let prefix = format!("{}: speaker-{i} ", s.nickname);
        let said: Vec<usize> = transcript
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .collect();
        assert!(said.len() > 1, "{} said nothing", s.nickname);
        assert!(said.windows(2).all(|w| w[0] < w[1]), "{said:?}");
        let last = said[said.len() - 1];
        let missing: Vec<usize> = (0..last).filter(|k| !said.contains(k)).collect();
        assert!(
            missing.iter().all(|k| s.in_doubt.contains(k)) && s.in_doubt.len() <= 2,
            "{}: missing {missing:?}, in doubt {:?}",
            s.nickname,
            s.in_doubt
        );
    }
}
