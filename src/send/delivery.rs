//! One client's delivery: where it is in the log, what waits for it alone, and the one
//! `sendmsg` that sends both.
//!
//! The bytes a client gets are the log from its cursor on, with its private frames (each
//! marked with the log offset it goes before) in their places. A send may stop anywhere,
//! mid-frame and mid-segment; the next one picks up there. When the connection closes, a
//! limit says where in the log it stops: after the frame it is in, never inside one. How an
//! eviction or a write timeout sets that limit is `delivery/ending.rs`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use crate::send::log::{Cursor, Segment};
use crate::send::outbox::{Outbox, Phase};
use crate::sys::send_nonblocking;
use crate::trace::{Direction, FrameTrace, Trace};
use crate::wire::{self, Frame};

/// Linux takes at most 1024 pieces in one `sendmsg`.
const MAX_SLICES_PER_SEND: usize = 1024;

/// What the writer keeps for one client.
pub struct Delivery {
    pub outbox: Arc<Outbox>,
    cursor: Cursor,
    /// Frames for this client alone, each with the log offset it goes before.
    private: VecDeque<(u64, Frame)>,
    /// How much of the first private frame is already sent.
    private_sent: usize,
    /// `None` while the connection is open. Once it closes: the log offset, a frame
    /// boundary, where this client's share of the log ends.
    limit: Option<u64>,
    /// With `--trace`: decodes what is sent, frame by frame.
    frames_out: Option<FrameTrace>,
}

/// How one send went.
#[derive(Debug, PartialEq)]
pub enum Sent {
    /// `full`: the socket took less than it was offered. `more`: there was more than one
    /// `sendmsg` can carry, which is for the next pass.
    Bytes { sent: usize, full: bool, more: bool },
    /// The cursor fell out of the log.
    Lapped,
    /// The connection is broken.
    Failed,
}

impl Delivery {
    pub fn new(outbox: Arc<Outbox>, cursor: Cursor, trace: Trace) -> Delivery {
        Delivery {
            outbox,
            cursor,
            private: VecDeque::new(),
            private_sent: 0,
            limit: None,
            frames_out: trace.frames(Direction::Out),
        }
    }

    /// Takes the private frames queued since the last call. Once the connection is closing,
    /// fixes where the log stops for this client: after its last private frame's place, and
    /// never inside a frame.
    pub fn collect(&mut self) {
        let phase = self.outbox.take(&mut self.private);
        if phase != Phase::Open && self.limit.is_none() {
            let last = self.private.back().map_or(0, |(at, _)| *at);
            self.limit = Some(last.max(self.cursor.frame_end()));
        }
    }

    /// Still taking lines from the log.
    pub fn is_open(&self) -> bool {
        self.limit.is_none()
    }

    /// Where in the log it is: every byte before this was handed to the kernel.
    pub fn at(&self) -> u64 {
        self.cursor.at()
    }

    pub fn behind(&self, head: u64) -> u64 {
        self.cursor.behind(head)
    }

    /// Everything up to the limit is sent: the write side can be shut.
    pub fn finished(&self) -> bool {
        self.limit
            .is_some_and(|limit| self.private.is_empty() && self.cursor.at() >= limit)
    }

    /// Builds the slices from the cursor to `head` (or the client's limit), with private frames
    /// in their places, and sends them with one `sendmsg`.
    pub fn send(&mut self, snapshot: &[Arc<Segment>], head: u64, trace: Trace) -> Sent {
        let to = self.limit.map_or(head, |limit| head.min(limit));
        let mut slices: Vec<IoSlice<'_>> = Vec::new();
        // For each slice: true if it is a private frame, and its length.
        let mut kinds: Vec<(bool, usize)> = Vec::new();
        let mut pos = self.cursor.at();
        for (i, (at, frame)) in self.private.iter().enumerate() {
            // Only a frame queued before the join can lie before the cursor, which then still
            // sits on the join line's first byte: a frame boundary.
            let at = (*at).max(pos);
            if at > to {
                break;
            }
            let before = slices.len();
            if self.cursor.gather(pos, at, snapshot, &mut slices).is_err() {
                return Sent::Lapped;
            }
            kinds.extend(slices[before..].iter().map(|s| (false, s.len())));
            pos = at;
            let skip = if i == 0 { self.private_sent } else { 0 };
            slices.push(IoSlice::new(&frame[skip..]));
            kinds.push((true, frame.len() - skip));
        }
        let before = slices.len();
        if self.cursor.gather(pos, to, snapshot, &mut slices).is_err() {
            return Sent::Lapped;
        }
        kinds.extend(slices[before..].iter().map(|s| (false, s.len())));
        if slices.is_empty() {
            return Sent::Bytes {
                sent: 0,
                full: false,
                more: false,
            };
        }
        let total = slices.len();
        let count = total.min(MAX_SLICES_PER_SEND);
        let offered: usize = kinds[..count].iter().map(|k| k.1).sum();
        let sent = match send_nonblocking(&self.outbox.socket, &slices[..count]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            // Nothing went, and the socket is not full: the next pass tries again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                return Sent::Bytes {
                    sent: 0,
                    full: false,
                    more: true,
                }
            }
            Err(_) => return Sent::Failed,
        };
        traced::trace_sent(&mut self.frames_out, &self.outbox, &slices, sent, trace);
        drop(slices);

        for (&(private, len), n) in kinds.iter().zip(shares(sent, kinds.iter().map(|k| k.1))) {
            if private {
                self.private_sent += n;
                if n == len {
                    self.private.pop_front();
                    self.private_sent = 0;
                }
            } else {
                self.cursor.advance(n as u64, snapshot);
            }
        }
        self.outbox.handed_up_to(self.cursor.at());
        Sent::Bytes {
            sent,
            full: sent < offered,
            more: count < total,
        }
    }
}

/// How much of each piece a send of `sent` bytes took, piece by piece, up to the last piece
/// it reached (which may have gone only in part).
fn shares(mut sent: usize, lens: impl IntoIterator<Item = usize>) -> impl Iterator<Item = usize> {
    lens.into_iter().map_while(move |len| {
        if sent == 0 {
            return None;
        }
        let n = sent.min(len);
        sent -= n;
        Some(n)
    })
}

mod ending;
mod traced;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::log::Log;
    use crate::send::outbox::Refused;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A connected pair on loopback: the server's end (for an outbox) and the client's.
    fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (Arc::new(server), client)
    }

    fn delivery(log: &Log, socket: Arc<TcpStream>, at: u64) -> Delivery {
        let peer = socket.peer_addr().unwrap();
        let outbox = Arc::new(Outbox::new(
            socket,
            peer.to_string(),
            0,
            wire::Dialect::Plain,
            log.reader(),
        ));
        Delivery::new(outbox, log.cursor_at(at), Trace::new(false))
    }

    fn send_all(delivery: &mut Delivery, log: &Log) -> Sent {
        let mut snapshot = Vec::new();
        log.reader().snapshot(&mut snapshot);
        delivery.collect();
        delivery.send(&snapshot, log.head(), Trace::new(false))
    }

    /// Reads frames until `count` have arrived; returns each frame's first byte and payload.
    fn frames(socket: &mut TcpStream, count: usize) -> Vec<(u8, Vec<u8>)> {
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        let mut buf = [0u8; 65536];
        while frames.len() < count {
            let n = socket.read(&mut buf).unwrap();
            assert!(n > 0, "closed after {} frames", frames.len());
            bytes.extend_from_slice(&buf[..n]);
            while let Some(len) = crate::send::log::frame_len(&bytes).filter(|&l| l <= bytes.len())
            {
                let header = match bytes[1] & 0x7f {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                frames.push((bytes[0], bytes[header..len].to_vec()));
                bytes.drain(..len);
            }
        }
        frames
    }

    #[test]
    fn a_send_takes_whole_pieces_then_part_of_one() {
        let shares = |sent, lens: &[usize]| shares(sent, lens.iter().copied()).collect::<Vec<_>>();
        assert_eq!(shares(10, &[4, 4, 4]), [4, 4, 2]);
        assert_eq!(shares(8, &[4, 4, 4]), [4, 4]);
        assert_eq!(shares(3, &[4, 4]), [3]);
        assert_eq!(shares(0, &[4]), [] as [usize; 0]);
    }

    #[test]
    fn a_private_frame_goes_between_the_log_ranges_around_it() {
        let mut log = Log::new(1 << 20);
        let (server, mut client) = pair();
        let mut delivery = delivery(&log, server, 0);
        log.append(&wire::text_frame("one"));
        log.append(&wire::text_frame("two"));
        let _ = delivery
            .outbox
            .push(wire::text_frame("only for you"))
            .unwrap();
        log.append(&wire::text_frame("three"));
        assert!(matches!(
            send_all(&mut delivery, &log),
            Sent::Bytes { full: false, .. }
        ));
        let got: Vec<Vec<u8>> = frames(&mut client, 4).into_iter().map(|f| f.1).collect();
        let want: Vec<&[u8]> = vec![b"one", b"two", b"only for you", b"three"];
        assert_eq!(got, want);
    }

    /// Shrinks the server side's send buffer, so a big frame cannot go in one send.
    fn small_send_buffer(socket: &TcpStream) {
        let small: libc::c_int = 4096;
        // SAFETY: a live local of the type the option expects.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    #[test]
    fn private_frames_too_big_for_one_send_arrive_whole_in_their_places() {
        let mut log = Log::new(1 << 24);
        let (server, mut client) = pair();
        small_send_buffer(&server);
        let mut delivery = delivery(&log, server, 0);
        let first = "p".repeat(1 << 20);
        let second = "q".repeat(300_000);
        log.append(&wire::text_frame("one"));
        for private in [&first, &second] {
            let _ = delivery.outbox.push(wire::text_frame(private)).unwrap();
        }
        log.append(&wire::text_frame("two"));
        let reading = std::thread::spawn(move || frames(&mut client, 4));
        let mut partial = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match send_all(&mut delivery, &log) {
                Sent::Bytes { full, .. } => partial += usize::from(full),
                other => panic!("the send went wrong: {other:?}"),
            }
            if delivery.private.is_empty() && delivery.behind(log.head()) == 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never all sent");
        }
        assert!(partial > 0, "every send took everything: nothing was tried");
        let got: Vec<Vec<u8>> = reading.join().unwrap().into_iter().map(|f| f.1).collect();
        let want: Vec<&[u8]> = vec![b"one", first.as_bytes(), second.as_bytes(), b"two"];
        assert!(got == want, "a frame was cut, repeated or moved");
    }

    #[test]
    fn a_send_that_takes_everything_is_not_full_and_a_send_to_a_reset_peer_fails() {
        let mut log = Log::new(1 << 20);
        let (server, client) = pair();
        let mut delivery = delivery(&log, server, 0);
        log.append(&wire::text_frame("one"));
        let sent = send_all(&mut delivery, &log);
        assert_eq!(
            sent,
            Sent::Bytes {
                sent: 5,
                full: false,
                more: false
            }
        );
        // The peer goes with a reset.
        crate::sys::close_with_reset(client);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            log.append(&wire::text_frame("more"));
            match send_all(&mut delivery, &log) {
                Sent::Failed => break,
                Sent::Bytes { sent, .. } => assert!(sent > 0, "a reset is not a full socket"),
                Sent::Lapped => panic!("lapped"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the reset never showed"
            );
        }
    }

    #[test]
    fn an_evicted_client_gets_the_rest_of_its_frame_then_close_1008() {
        let mut log = Log::new(1 << 24);
        let (server, mut client) = pair();
        small_send_buffer(&server);
        let mut delivery = delivery(&log, server, 0);
        let big = "b".repeat(3 << 20);
        log.append(&wire::text_frame(&big));
        log.append(&wire::text_frame("never sent"));
        let first = send_all(&mut delivery, &log);
        assert!(
            matches!(first, Sent::Bytes { full: true, .. }),
            "the socket should take only part: {first:?}"
        );
        assert!(delivery.evict());
        assert!(!delivery.evict(), "evicted once");
        let reading = std::thread::spawn(move || frames(&mut client, 2));
        while !delivery.finished() {
            if send_all(&mut delivery, &log) == Sent::Failed {
                panic!("the send failed");
            }
        }
        let got = reading.join().unwrap();
        assert_eq!(got[0].0, 0x81);
        assert_eq!(got[0].1.len(), big.len(), "the big frame arrives whole");
        assert_eq!(got[1].0, 0x88);
        assert_eq!(&got[1].1[..2], &1008u16.to_be_bytes());
        assert_eq!(&got[1].1[2..], b"too slow");
    }

    #[test]
    fn a_client_evicted_mid_private_frame_gets_the_rest_of_it_then_close_1008() {
        let mut log = Log::new(1 << 24);
        let (server, mut client) = pair();
        small_send_buffer(&server);
        let mut delivery = delivery(&log, server, 0);
        let big = "p".repeat(2 << 20);
        let _ = delivery.outbox.push(wire::text_frame(&big)).unwrap();
        let _ = delivery
            .outbox
            .push(wire::text_frame("never sent"))
            .unwrap();
        log.append(&wire::text_frame("never sent either"));
        let first = send_all(&mut delivery, &log);
        assert!(
            matches!(first, Sent::Bytes { full: true, .. }),
            "the socket should take only part: {first:?}"
        );
        assert!(delivery.evict());
        let reading = std::thread::spawn(move || frames(&mut client, 2));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !delivery.finished() {
            assert_ne!(send_all(&mut delivery, &log), Sent::Failed);
            assert!(std::time::Instant::now() < deadline, "never finished");
        }
        let got = reading.join().unwrap();
        assert_eq!(got[0].0, 0x81);
        assert!(
            got[0].1 == big.as_bytes(),
            "the private frame arrives whole"
        );
        assert_eq!(got[1].0, 0x88);
        assert_eq!(&got[1].1[2..], b"too slow");
    }

    #[test]
    fn a_client_timed_out_between_frames_gets_the_close_it_was_owed_with_its_reason() {
        let log = Log::new(1 << 24);
        let (server, mut client) = pair();
        let mut delivery = delivery(&log, server, 0);
        let owed = wire::close_frame(wire::CLOSE_POLICY, "flooding");
        let _ = delivery.outbox.push(owed).unwrap();
        assert!(delivery.time_out());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !delivery.finished() {
            assert_ne!(send_all(&mut delivery, &log), Sent::Failed);
            assert!(std::time::Instant::now() < deadline, "never finished");
        }
        let got = frames(&mut client, 1);
        assert_eq!(got[0].0, 0x88);
        assert_eq!(
            &got[0].1[2..],
            b"flooding",
            "its own reason, not \"not reading\""
        );
    }

    #[test]
    fn a_client_timed_out_in_the_middle_of_its_close_gets_that_close_once() {
        let log = Log::new(1 << 24);
        let (server, _client) = pair();
        let mut delivery = delivery(&log, server, 0);
        let close = wire::close_frame(wire::CLOSE_POLICY, "flooding");
        let _ = delivery.outbox.push(close.clone()).unwrap();
        delivery.collect();
        // Its first bytes are on their way: the rest of it is all the client still gets.
        delivery.private_sent = 2;
        delivery.time_out();
        let closes: Vec<_> = delivery.private.iter().map(|(_, f)| f.clone()).collect();
        assert_eq!(closes, vec![close]);
    }

    #[test]
    fn more_pieces_than_one_sendmsg_takes_go_in_the_next_and_say_so() {
        let mut log = Log::new(1 << 24);
        let (server, mut client) = pair();
        let mut delivery = delivery(&log, server, 0);
        // A line, then a frame for this client alone, and again: two pieces each.
        let count = MAX_SLICES_PER_SEND;
        for i in 0..count {
            log.append(&wire::text_frame(&format!("line {i}")));
            let at = log.head();
            delivery
                .private
                .push_back((at, wire::text_frame(&format!("mine {i}"))));
        }
        let reading = std::thread::spawn(move || frames(&mut client, 2 * count));
        let first = send_all(&mut delivery, &log);
        assert!(
            matches!(
                first,
                Sent::Bytes {
                    more: true,
                    full: false,
                    ..
                }
            ),
            "{first:?}"
        );
        let second = send_all(&mut delivery, &log);
        assert!(
            matches!(
                second,
                Sent::Bytes {
                    more: false,
                    full: false,
                    ..
                }
            ),
            "{second:?}"
        );
        let got: Vec<Vec<u8>> = reading.join().unwrap().into_iter().map(|f| f.1).collect();
        let want: Vec<Vec<u8>> = (0..count)
            .flat_map(|i| [format!("line {i}"), format!("mine {i}")])
            .map(String::into_bytes)
            .collect();
        assert!(got == want, "every piece once, in order");
    }

    #[test]
    fn an_evicted_client_is_sent_nothing_more_and_finishes() {
        let mut log = Log::new(1 << 20);
        let (server, mut client) = pair();
        let mut delivery = delivery(&log, server, 0);
        log.append(&wire::text_frame("one"));
        assert!(delivery.evict());
        // A pong or a notice after the eviction would be placed after the close, and the
        // delivery would never finish.
        assert_eq!(
            delivery.outbox.push(wire::text_frame("a pong")),
            Err(Refused::Closed)
        );
        log.append(&wire::text_frame("two"));
        for _ in 0..100 {
            if delivery.finished() {
                break;
            }
            assert_ne!(send_all(&mut delivery, &log), Sent::Failed);
        }
        assert!(delivery.finished());
        let got = frames(&mut client, 1);
        assert_eq!(
            got[0].0, 0x88,
            "the close comes first, and nothing after it"
        );
        assert_eq!(&got[0].1[2..], b"too slow");
    }
}
