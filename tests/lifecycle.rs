//! A connection's life: it survives a paused server, it ends with a close frame the client
//! can read, and it leaves nothing behind.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::{Message, WebSocket};

#[test]
fn a_paused_server_keeps_every_client() {
    let server = Server::start(&[]);
    let mut clients = vec![server.join(), server.join(), server.join()];
    settle(&mut clients);
    for (round, secs) in [0.3, 1.0, 3.0].into_iter().enumerate() {
        pause_process(server.pid(), Duration::from_secs_f64(secs));
        let line = format!("after a pause of {secs} s");
        clients[round].say(&line);
        let want = format!("{}: {line}", clients[round].nickname);
        for client in &mut clients {
            assert_eq!(client.line(), want, "after a pause of {secs} s");
        }
    }
}

fn entries(path: String) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// The server's open descriptors and threads.
fn footprint(server: &Server) -> (usize, usize) {
    let pid = server.pid();
    (
        entries(format!("/proc/{pid}/fd")),
        entries(format!("/proc/{pid}/task")),
    )
}

/// A connection that has finished the handshake and reads only when told to.
fn quiet_client(server: &Server) -> WebSocket<TcpStream> {
    let socket = TcpStream::connect(server.ws).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let (ws, _) = tungstenite::client(server.ws_url("/"), socket).unwrap();
    ws
}

/// Reads everything `witness` gets, in a thread of its own so that it never falls behind,
/// until `nickname`'s leave; `read` counts the lines it has read so far.
fn watch_for_leave(
    mut witness: Client,
    nickname: String,
    read: Arc<AtomicUsize>,
) -> thread::JoinHandle<Client> {
    thread::spawn(move || {
        let left = format!(" .... {nickname} has left.");
        while witness.line() != left {
            read.fetch_add(1, Ordering::Relaxed);
        }
        witness
    })
}

/// After the close frame the connection ends in order: no reset under it.
fn assert_clean_end(ws: &mut WebSocket<TcpStream>) {
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected an orderly end after the close frame, got {other:?}"),
    }
}

#[test]
fn a_flooder_that_stops_reading_is_evicted_and_reads_1008_with_its_reason() {
    let server = Server::start(&[
        "--rate-limit",
        "0",
        "--write-timeout",
        "60",
        "--max-lag-bytes",
        "1048576",
    ]);
    let mut witness = server.join();
    let mut flooder = quiet_client(&server);
    let nickname = witness.line();
    let nickname = nickname
        .strip_prefix(" .... ")
        .and_then(|r| r.strip_suffix(" has joined."))
        .unwrap()
        .to_owned();
    let read = Arc::new(AtomicUsize::new(0));
    let watching = watch_for_leave(witness, nickname.clone(), read.clone());
    let line = "f".repeat(8 * 1024);
    // The flooder never reads, so its own lines pile up until it is evicted; it waits for the
    // witness, which reads everything, to keep within 64 lines, so that only it falls behind.
    let mut sent = 0;
    while !watching.is_finished() {
        if sent < read.load(Ordering::Relaxed) + 64 {
            flooder.send(Message::text(line.clone())).unwrap();
            sent += 1;
        } else {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let mut witness = watching.join().expect("the witness saw the flooder leave");
    assert_eq!(
        expect_close(&mut flooder),
        (1008, "too slow".to_owned()),
        "after its backlog the flooder reads why it was closed"
    );
    assert_clean_end(&mut flooder);
    witness.say("still here");
    assert_eq!(witness.line(), format!("{}: still here", witness.nickname));
}

#[test]
fn an_oversized_message_reads_1009_with_its_reason_and_no_reset() {
    let server = Server::start(&["--max-message-bytes", "1000"]);
    let mut witness = server.join();
    let mut big = quiet_client(&server);
    let nickname = witness.line();
    // Far more than the limit: most of it is still on the way when the server closes.
    big.send(Message::text("b".repeat(1 << 20))).unwrap();
    assert_eq!(expect_close(&mut big), (1009, "message too big".to_owned()));
    assert_clean_end(&mut big);
    let nickname = nickname
        .strip_prefix(" .... ")
        .and_then(|r| r.strip_suffix(" has joined."))
        .unwrap();
    assert_eq!(witness.line(), format!(" .... {nickname} has left."));
}

/// README: every close frame the server sends is followed by an orderly end of the stream.
/// The end follows the close frame at once: a client that answers the close as RFC 6455
/// asks, and waits for the end before it lets go, does not wait for the server's grace
/// (`CLOSE_GRACE`, 0.5 s, for a client that never ends its side).
#[test]
fn the_end_of_the_stream_follows_the_server_s_close_frame_at_once() {
    let server = Server::start(&[]);
    let mut raw = RawClient::connect(server.ws);
    raw.send_frame(0x82, MASK, b"not text");
    assert_eq!(raw.close_code(), (1003, "text messages only".to_owned()));
    let read = Instant::now();
    raw.send_frame(0x88, MASK, &1003u16.to_be_bytes());
    let mut rest = Vec::new();
    let ended = raw.socket.read_to_end(&mut rest);
    let took = read.elapsed();
    assert!(ended.is_ok(), "no orderly end: {ended:?}");
    assert!(
        rest.is_empty(),
        "{} bytes after the close frame",
        rest.len()
    );
    // At once; a quarter of a second for a loaded machine, half the grace.
    assert!(
        took < Duration::from_millis(250),
        "the end of the stream came {took:?} after the close frame"
    );
}

/// How long the client below goes on sending before it reads: well within the grace the
/// server gives a closed connection to read its close frame (`CLOSE_GRACE`, 0.5 s).
const READS_LATE: Duration = Duration::from_millis(150);

#[test]
fn a_client_that_goes_on_sending_after_its_close_still_reads_it_whole() {
    let server = Server::start(&["--max-message-bytes", "1000"]);
    let mut late = quiet_client(&server);
    late.send(Message::text("b".repeat(4000))).unwrap();
    // It has not read the close yet, and says more meanwhile: the server must not reset the
    // connection under it, which would take the close frame from its socket unread.
    let until = Instant::now() + READS_LATE;
    while Instant::now() < until {
        late.send(Message::text("still talking")).unwrap();
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        expect_close(&mut late),
        (1009, "message too big".to_owned())
    );
    assert_clean_end(&mut late);
}

#[test]
fn a_client_evicted_while_it_keeps_pinging_leaves_nothing_behind() {
    let server = Server::start(&["--rate-limit", "0", "--max-lag-bytes", "1048576"]);
    let mut witness = server.join();
    settle(std::slice::from_mut(&mut witness));
    let baseline = footprint(&server);
    // Pings every millisecond from the start; reads nothing until it has been evicted.
    let pinger = RawClient::connect(server.ws);
    let mut reading_end = pinger.socket.try_clone().unwrap();
    let nickname = witness.line();
    let nickname = nickname
        .strip_prefix(" .... ")
        .and_then(|r| r.strip_suffix(" has joined."))
        .unwrap()
        .to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let pinging = {
        let stop = stop.clone();
        let mut pinger = pinger;
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                pinger.send_frame(0x89, MASK, b"still here");
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // The witness floods until the pinger, which reads nothing, is evicted.
    let left = format!(" .... {nickname} has left.");
    let mine = format!("{}: {}", witness.nickname, "w".repeat(8 * 1024));
    let mut unread = 0;
    loop {
        if unread < 64 {
            witness.say(&"w".repeat(8 * 1024));
            unread += 1;
            continue;
        }
        let got = witness.line();
        if got == left {
            break;
        }
        assert_eq!(got, mine);
        unread -= 1;
    }
    // Now it reads everything it is sent, while it goes on pinging.
    let reading = thread::spawn(move || {
        let mut sink = vec![0u8; 1 << 16];
        while matches!(reading_end.read(&mut sink), Ok(n) if n > 0) {}
    });
    // Its socket, its thread and its share of the log go within a second of its eviction
    // (a further second allowed for a loaded machine), well before the write timeout.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = footprint(&server);
        if now == baseline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors and threads {now:?}, before it came {baseline:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    pinging.join().unwrap();
    reading.join().unwrap();
}

#[test]
fn with_pings_off_an_idle_client_is_never_taken_for_dead() {
    let server = Server::start(&["--ping-interval", "0", "--pong-timeout", "0.3"]);
    let mut idle = server.join();
    // Idle for several times what would otherwise be the silence limit.
    thread::sleep(Duration::from_millis(1500));
    idle.say("still here");
    assert_eq!(idle.line(), format!("{}: still here", idle.nickname));
}

#[test]
fn contradictory_timing_settings_are_refused_naming_both_flags() {
    // Refused before it listens: a server that starts serving instead is killed at the
    // deadline and fails the test.
    let output = run_to_exit(&["--ping-interval", "5", "--pong-timeout", "5"], PATIENCE);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--ping-interval") && stderr.contains("--pong-timeout"),
        "{stderr}"
    );
}

#[test]
fn a_pause_longer_than_the_write_timeout_drops_no_client_that_was_waiting_to_be_written_to() {
    let server = Server::start(&[
        "--rate-limit",
        "0",
        "--write-timeout",
        "2",
        "--max-lag-bytes",
        "67108864",
    ]);
    let mut sender = server.join();
    let mut late = quiet_client(&server);
    let late_name = sender.line();
    // The late reader reads nothing while 8 MB go by, in well under the write timeout: its
    // socket fills, and its writer waits for it.
    let line = "l".repeat(60 * 1024);
    let mine = format!("{}: {line}", sender.nickname);
    for _ in 0..140 {
        sender.say(&line);
        assert_eq!(sender.line(), mine);
    }
    // Stopped for twice the write timeout, then it reads at once: nothing is lost.
    pause_process(server.pid(), Duration::from_secs(4));
    assert_eq!(read_text(&mut late), late_name, "its own join comes first");
    let mut got = 0;
    while got < 140 {
        match read_text(&mut late) {
            text if text == mine => got += 1,
            other => panic!("unexpected {other:.60}"),
        }
    }
    sender.say("still there?");
    assert_eq!(
        read_text(&mut late),
        format!("{}: still there?", sender.nickname)
    );
}
