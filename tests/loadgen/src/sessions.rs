//! Sessions left behind: clients of the resume dialect that take a session and drop their
//! connection without a close, as a script (or a train going into a tunnel) does. Each keeps
//! its name and its seat for the resume window. How many the server holds, what each costs,
//! and how long a newcomer then waits for its own join.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::conn;
use crate::probe::Server;

/// Threads that open sessions side by side.
const OPENERS: usize = 8;
/// The server's own share per address (its default): sessions come from many addresses.
const PER_ADDRESS: usize = 500;
/// Source addresses 127.0.0.2 and up.
const ADDRESSES: usize = 250;
/// Newcomers timed after the sessions are in place.
const NEWCOMERS: usize = 20;
/// Longest wait for any one answer.
const PATIENCE: Duration = Duration::from_secs(10);

/// What one run measured.
pub struct Detached {
    /// Sessions the server took (the rest were refused: 429, 503 or close 1013).
    pub held: usize,
    pub refused: usize,
    pub per_session_bytes: f64,
    /// From the connect to the newcomer's own join line (or its refusal, when full).
    pub newcomer_p50: Duration,
    pub newcomer_max: Duration,
    /// How the newcomers were answered: joined, or refused.
    pub newcomers_joined: usize,
}

/// How one attempt ended.
enum Answer {
    Joined,
    Refused,
}

/// The handshake of `protocol` (if any), `new` if it is the resume dialect, and the bytes
/// until the client's own join line; `None` if the server refused it.
fn open(server: &Server, source: u8, resumable: bool) -> Option<(TcpStream, Answer)> {
    let protocol = resumable.then_some("threadchat-resume");
    let (mut stream, mut got) = match conn::connect_asking(server.ws, source, protocol) {
        Ok(opened) => opened,
        // 429 or 503 in the handshake's answer.
        Err(e) if e.to_string().starts_with("HTTP/1.1 ") => return None,
        Err(e) => panic!("connecting from 127.0.0.{source}: {e}"),
    };
    stream.set_read_timeout(Some(PATIENCE)).ok()?;
    if resumable {
        let mut frame = Vec::new();
        conn::client_frame(0x1, b"new", &mut frame);
        stream.write_all(&frame).ok()?;
    }
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((opcode, range)) = conn::next_frame(&got) {
            let joined = got[range.clone()].ends_with(b" has joined.");
            got.drain(..range.end);
            match opcode {
                0x8 => return Some((stream, Answer::Refused)),
                0x1 if joined => return Some((stream, Answer::Joined)),
                _ => {}
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Some((stream, Answer::Refused)),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("no answer within {PATIENCE:?}: {e}"),
        }
    }
}

/// Drops the connection with a reset and no close frame (SO_LINGER 0), so the server keeps
/// the session for its window.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Leaves `sessions` detached sessions behind on a server that holds at most `max_clients`,
/// then times `NEWCOMERS` plain clients one after another.
pub fn detached(binary: &str, sessions: usize, max_clients: usize) -> Detached {
    let max = max_clients.to_string();
    let per_address = PER_ADDRESS.to_string();
    let server = Server::start(
        binary,
        &[
            "--max-clients",
            &max,
            "--max-clients-per-address",
            &per_address,
            "--resume-window",
            "600",
            "--ping-interval",
            "0",
        ],
    );
    // The empty server once one session has come and gone, so every path's code is in.
    if let Some((stream, _)) = open(&server, 2, true) {
        reset(stream);
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = server.status("VmRSS");
    let next = AtomicUsize::new(0);
    let (held, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for _ in 0..OPENERS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= sessions {
                    break;
                }
                // Spread over as few addresses as the per-address share allows.
                let source = 3 + (i / PER_ADDRESS % ADDRESSES) as u8;
                match open(&server, source, true) {
                    Some((stream, Answer::Joined)) => {
                        held.fetch_add(1, Ordering::Relaxed);
                        reset(stream);
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let held = held.into_inner();
    // Let the room place every drop.
    std::thread::sleep(Duration::from_secs(1));
    let after = server.status("VmRSS");
    let mut waits = Vec::new();
    let mut newcomers_joined = 0;
    for _ in 0..NEWCOMERS {
        let start = Instant::now();
        let answer = open(&server, 2, false);
        waits.push(start.elapsed());
        if let Some((_, Answer::Joined)) = answer {
            newcomers_joined += 1;
        }
    }
    waits.sort();
    Detached {
        held,
        refused: refused.into_inner(),
        per_session_bytes: after.saturating_sub(before) as f64 * 1024.0 / held.max(1) as f64,
        newcomer_p50: waits[waits.len() / 2],
        newcomer_max: waits[waits.len() - 1],
        newcomers_joined,
    }
}
