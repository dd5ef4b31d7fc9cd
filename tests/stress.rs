//! A bounded stress run: 200 clients join, chat and leave at random while some of them
//! misbehave. Every witness connected throughout must end with the same, complete
//! transcript, and the server must give back every thread and descriptor.

mod common;

use std::collections::HashMap;
use std::thread;

use common::*;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

const WORKERS: usize = 8;
const CLIENTS_PER_WORKER: usize = 25;

/// What one short-lived client did, for checking against the witnesses' transcripts.
struct Visit {
    nickname: String,
    said: Vec<String>,
}

/// A frame sent as it is, bypassing the client's own checks.
fn raw_frame(opcode: Data, payload: &[u8]) -> Message {
    Message::Frame(Frame::message(payload.to_vec(), OpCode::Data(opcode), true))
}

fn visit(server: &Server, worker: usize, n: usize) -> Visit {
    let behaviour = rand::random_range(0..10);
    let mut client = server.join();
    let nickname = client.nickname.clone();
    let mut said = Vec::new();
    match behaviour {
        // Misbehaviours: each is closed by the server.
        0 => {
            client.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
            assert_eq!(client.close_frame().0, 1003);
        }
        1 => {
            client.say(&"x".repeat(2000));
            assert_eq!(client.close_frame().0, 1009);
        }
        2 => {
            client
                .ws
                .send(raw_frame(Data::Text, &[0xff, 0xfe]))
                .unwrap();
            assert_eq!(client.close_frame().0, 1007);
        }
        3 => {
            client
                .ws
                .send(raw_frame(Data::Continue, b"orphan"))
                .unwrap();
            assert_eq!(client.close_frame().0, 1002);
        }
        // Well-behaved: say a few lines, wait for the last to come back, then go.
        _ => {
            for j in 0..rand::random_range(1..4) {
                let text = format!("m {worker}-{n}-{j}");
                client.say(&text);
                said.push(format!("{nickname}: {text}"));
            }
            let last = said.last().unwrap().clone();
            client.until(&last);
            if behaviour % 2 == 0 {
                client.ws.close(None).unwrap();
                while client.ws.read().is_ok() {}
            } // else: just drop the connection
        }
    }
    Visit { nickname, said }
}

#[test]
fn two_hundred_clients_come_and_go_and_the_witnesses_miss_nothing() {
    let server = Server::start(&["--max-message-bytes", "1000"]);
    let mut witnesses: Vec<Client> = (0..3).map(|_| server.join()).collect();
    settle(&mut witnesses);
    let pid = server.pid();
    let threads_before = count_entries(format!("/proc/{pid}/task"));
    let files_before = count_entries(format!("/proc/{pid}/fd"));

    let visits: Vec<Visit> = thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let server = &server;
                scope.spawn(move || {
                    (0..CLIENTS_PER_WORKER)
                        .map(|n| visit(server, w, n))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });

    // A leave is announced once the server has seen its connection end, which can be after
    // the visit's thread has returned: each witness reads until it has heard every leave (a
    // missing one fails the read's deadline), then a marker shows nothing else was said.
    let everyone = WORKERS * CLIENTS_PER_WORKER;
    let mut transcripts: Vec<Vec<String>> = witnesses
        .iter_mut()
        .map(|w| {
            let (mut heard, mut left) = (Vec::new(), 0);
            while left < everyone {
                let line = w.line();
                left += usize::from(line.ends_with(" has left."));
                heard.push(line);
            }
            heard
        })
        .collect();
    let done = format!("{}: done", witnesses[0].nickname);
    witnesses[0].say("done");
    for (w, transcript) in witnesses.iter_mut().zip(&mut transcripts) {
        transcript.extend(w.until(&done));
    }
    assert_eq!(transcripts[0], transcripts[1]);
    assert_eq!(transcripts[0], transcripts[2]);

    // Replay the transcript: every join is followed by exactly one leave, nobody speaks
    // while absent, and every well-behaved client's lines are all there, in order.
    let transcript = &transcripts[0];
    let mut present: HashMap<&str, bool> = HashMap::new();
    let (mut joins, mut leaves) = (0, 0);
    for line in transcript {
        if let Some(name) = line
            .strip_prefix(" .... ")
            .and_then(|r| r.strip_suffix(" has joined."))
        {
            assert!(
                !present.get(name).copied().unwrap_or(false),
                "{name} joined twice"
            );
            present.insert(name, true);
            joins += 1;
        } else if let Some(name) = line
            .strip_prefix(" .... ")
            .and_then(|r| r.strip_suffix(" has left."))
        {
            assert_eq!(
                present.insert(name, false),
                Some(true),
                "{name} left without joining"
            );
            leaves += 1;
        } else {
            let name = line.split(": ").next().unwrap();
            assert_eq!(present.get(name), Some(&true), "{name} spoke while absent");
        }
    }
    assert_eq!(joins, WORKERS * CLIENTS_PER_WORKER);
    assert_eq!(leaves, joins);
    for visit in &visits {
        let positions: Vec<usize> = visit
            .said
            .iter()
            .map(|line| {
                let found: Vec<usize> = transcript
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| *l == line)
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(
                    found.len(),
                    1,
                    "{} saw {line:?} {} times",
                    visit.nickname,
                    found.len()
                );
                found[0]
            })
            .collect();
        assert!(
            positions.windows(2).all(|p| p[0] < p[1]),
            "{}'s lines out of order",
            visit.nickname
        );
    }

    eventually("threads and descriptors back to where they started", || {
        count_entries(format!("/proc/{pid}/task")) == threads_before
            && count_entries(format!("/proc/{pid}/fd")) == files_before
    });
}
