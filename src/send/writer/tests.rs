//! A writer's timers and the room's full queue, with real sockets and a real writer thread.

use super::ending::after_pause;
use super::*;
use crate::send::log::Log;
use crate::wire::{self, Dialect};
use std::net::TcpStream;

/// A client's socket whose peer has gone with a reset.
fn reset_peer() -> Arc<TcpStream> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    sys::close_with_reset(client);
    Arc::new(server)
}

#[test]
fn a_leave_the_room_could_not_take_reaches_it_once_it_has_room_though_nothing_else_happens() {
    let (mut plain, numbered) = (Log::new(1 << 20), Log::new(1 << 20));
    // The room's queue is full (one place, taken).
    let (events, room) = crossbeam_channel::bounded(1);
    events.send(Event::Shutdown).unwrap();
    let logs = [plain.reader(), numbered.reader()];
    let writer =
        Writer::spawn(0, logs, events, Duration::from_secs(10), Trace::new(false)).unwrap();
    let outbox = Arc::new(Outbox::new(
        reset_peer(),
        "gone".into(),
        0,
        Dialect::Plain,
        plain.reader(),
    ));
    writer.add(7, outbox.clone(), plain.cursor_at(plain.head()));
    // A line for everyone: sending it finds the reset, and the writer drops the client.
    let deadline = Instant::now() + Duration::from_secs(5);
    while outbox.phase() != Phase::Done {
        assert!(Instant::now() < deadline, "the reset never showed");
        plain.append(&wire::text_frame("anyone there?"));
        writer.wake();
        thread::sleep(Duration::from_millis(5));
    }
    // The room takes what it had; nothing else happens, and the leave comes by itself.
    assert!(matches!(room.recv(), Ok(Event::Shutdown)));
    let leave = room.recv_timeout(Duration::from_secs(2));
    assert!(
        matches!(leave, Ok(Event::Leave { id: 7, .. })),
        "{:?}",
        leave.map(|_| ())
    );
}

#[test]
fn a_pause_does_not_count_against_a_timer() {
    let since = Instant::now();
    let now = since + Duration::from_secs(5);
    let later = after_pause(since, Duration::from_secs(3), now);
    assert_eq!(later, since + Duration::from_secs(3));
    assert_eq!(after_pause(since, Duration::from_secs(9), now), now);
}
