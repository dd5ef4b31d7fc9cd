//! The log's segments, cursors, snapshots and what it keeps for those who come back.

use super::*;
use crate::wire;

fn concat(slices: &[IoSlice<'_>]) -> Vec<u8> {
    slices.iter().flat_map(|s| s.iter().copied()).collect()
}

fn snapshot(reader: &LogReader) -> Vec<Arc<Segment>> {
    let mut segments = Vec::new();
    reader.snapshot(&mut segments);
    segments
}

/// Appends `count` lines of `size` bytes and returns every frame's bytes, in order.
fn fill(log: &mut Log, count: usize, size: usize) -> Vec<u8> {
    let mut all = Vec::new();
    for i in 0..count {
        let frame = wire::text_frame(&format!("{i:>size$}"));
        log.append(&frame);
        all.extend_from_slice(&frame);
    }
    all
}

#[test]
fn frame_len_reads_every_length_form() {
    assert_eq!(frame_len(&wire::text_frame("hi")), Some(4));
    assert_eq!(frame_len(&wire::text_frame(&"x".repeat(200))), Some(204));
    assert_eq!(
        frame_len(&wire::text_frame(&"x".repeat(70_000))),
        Some(70_010)
    );
    assert_eq!(frame_len(&[0x81]), None);
}

#[test]
fn a_cursor_reads_from_where_it_joined_across_segments() {
    let mut log = Log::new(1 << 30);
    let reader = log.reader();
    fill(&mut log, 10, 100);
    let joined = log.head();
    let cursor = log.cursor_at(joined);
    // Enough to fill several segments.
    let expected = fill(&mut log, 2000, 100);
    let snap = snapshot(&reader);
    assert!(snap.len() >= 3, "the lines should span segments");
    let mut slices = Vec::new();
    cursor
        .gather(cursor.at(), reader.head(), &snap, &mut slices)
        .unwrap();
    assert_eq!(concat(&slices), expected);
    assert!(slices.len() >= 3, "one slice per segment touched");
}

#[test]
fn a_send_that_stops_mid_frame_and_mid_segment_resumes_there() {
    let mut log = Log::new(1 << 30);
    let reader = log.reader();
    let mut cursor = log.cursor_at(0);
    let expected = fill(&mut log, 1500, 90);
    let mut received = Vec::new();
    // Sends of awkward sizes, as a full socket would take them.
    for take in [7usize, 1000, 65_521, 3, 40_000].into_iter().cycle() {
        let snap = snapshot(&reader);
        let mut slices = Vec::new();
        cursor
            .gather(cursor.at(), reader.head(), &snap, &mut slices)
            .unwrap();
        let bytes = concat(&slices);
        if bytes.is_empty() {
            break;
        }
        let n = take.min(bytes.len());
        received.extend_from_slice(&bytes[..n]);
        drop(slices);
        cursor.advance(n as u64, &snap);
    }
    assert_eq!(received, expected);
}

#[test]
fn bytes_past_the_snapshot_are_not_passed_off_as_sent() {
    let mut log = Log::new(1 << 30);
    let reader = log.reader();
    let cursor = log.cursor_at(0);
    let all = fill(&mut log, 2000, 100);
    assert_eq!(reader.appends(), 2000);
    let snap = snapshot(&reader);
    assert!(snap.len() >= 3);
    let mut slices = Vec::new();
    cursor.gather(0, reader.head(), &snap, &mut slices).unwrap();
    assert!(concat(&slices) == all);
    // A snapshot without the newest segments cannot give the bytes up to the head.
    slices.clear();
    assert_eq!(
        cursor.gather(0, reader.head(), &snap[..1], &mut slices),
        Err(Lapped)
    );
}

#[test]
fn a_cursor_lapped_by_the_retention_is_told_so() {
    let retention = 3 * SEGMENT_BYTES as u64;
    let mut log = Log::new(retention);
    let reader = log.reader();
    let slow = log.cursor_at(0);
    fill(&mut log, 10_000, 100);
    let head = reader.head();
    assert!(slow.behind(head) > retention);
    let snap = snapshot(&reader);
    let mut slices = Vec::new();
    assert_eq!(
        slow.gather(slow.at(), head, &snap, &mut slices),
        Err(Lapped)
    );
    // The log itself let go of everything older than the retention.
    assert!(head - snap[0].base() <= retention + 2 * SEGMENT_BYTES as u64);
}

#[test]
fn a_writer_holding_a_segment_keeps_its_bytes_while_the_room_moves_on() {
    let mut log = Log::new(0);
    let reader = log.reader();
    let cursor = log.cursor_at(0);
    let expected = fill(&mut log, 3, 20);
    let held = snapshot(&reader);
    let mut slices = Vec::new();
    cursor.gather(0, reader.head(), &held, &mut slices).unwrap();
    // The room fills and drops many segments meanwhile.
    fill(&mut log, 20_000, 50);
    reader.trim();
    assert_eq!(concat(&slices), expected);
}

#[test]
fn a_first_frame_bigger_than_a_segment_gets_the_only_segment() {
    let mut log = Log::new(1 << 30);
    let reader = log.reader();
    let cursor = log.cursor_at(0);
    let big = wire::text_frame(&"b".repeat(SEGMENT_BYTES * 2));
    log.append(&big);
    let snap = snapshot(&reader);
    assert_eq!(snap.len(), 1, "no empty segment left at the same offset");
    let mut slices = Vec::new();
    cursor.gather(0, reader.head(), &snap, &mut slices).unwrap();
    assert!(concat(&slices) == big[..], "the frame reads back whole");
}

#[test]
fn the_recent_past_kept_for_resumes_stays_and_older_bytes_go() {
    let mut log = Log::new(1 << 30);
    let reader = log.reader();
    let keep = 100_000;
    log.keep(keep);
    fill(&mut log, 3000, 100);
    reader.trim();
    let head = reader.head();
    let oldest = log.oldest();
    assert!(snapshot(&reader).len() >= 2, "the kept bytes span segments");
    assert!(oldest > 0, "nobody is in the oldest bytes: they go");
    assert!(oldest <= head - keep, "the last {keep} bytes stay");
    assert!(log.cursor_back_at(oldest).is_some());
    assert!(log.cursor_back_at(0).is_none());
    log.keep(0);
    reader.trim();
    assert_eq!(
        snapshot(&reader).len(),
        1,
        "kept no longer: only the segment being filled"
    );
    assert!(log.oldest() > oldest);
}

#[test]
fn segments_nobody_is_in_are_let_go() {
    let mut log = Log::new(1 << 30);
    let reader = log.reader();
    let mut cursor = log.cursor_at(0);
    fill(&mut log, 5000, 100);
    assert!(snapshot(&reader).len() > 5);
    let snap = snapshot(&reader);
    cursor.advance(cursor.behind(reader.head()), &snap);
    drop(snap);
    reader.trim();
    assert_eq!(snapshot(&reader).len(), 1, "only the segment being filled");
}

#[test]
fn frame_end_finds_the_boundary_after_a_partial_frame() {
    let mut log = Log::new(1 << 30);
    let reader = log.reader();
    let first = wire::text_frame("hello");
    log.append(&first);
    log.append(&wire::text_frame("world"));
    let mut cursor = log.cursor_at(0);
    assert_eq!(cursor.frame_end(), 0);
    cursor.advance(3, &snapshot(&reader));
    assert_eq!(cursor.frame_end(), first.len() as u64);
}

#[test]
fn the_append_times_of_exactly_the_frames_sent_are_found() {
    let mut log = Log::new(1 << 20);
    let reader = log.reader();
    // Five frames of 4 bytes, appended at 10, 20, ... 50 us.
    let starts: Vec<u64> = (1..=5)
        .map(|i| log.append_at(&wire::text_frame("ab"), i * 10))
        .collect();
    assert_eq!(starts, [0, 4, 8, 12, 16]);
    let times = |from: u64, to: u64| {
        let mut got = Vec::new();
        reader.appended_in(reader.appends(), from, to, |t| got.push(t));
        got.reverse();
        got
    };
    assert_eq!(times(0, 20), [10, 20, 30, 40, 50]);
    assert_eq!(times(4, 12), [20, 30]);
    // A send that ends inside a frame counts the frame it began.
    assert_eq!(times(8, 13), [30, 40]);
    assert_eq!(times(20, 20), Vec::<u64>::new());
    // As of an earlier pass: only what had been appended then.
    let mut then = Vec::new();
    reader.appended_in(2, 0, 20, |t| then.push(t));
    assert_eq!(then, [20, 10]);
}

#[test]
fn frames_older_than_the_stamps_kept_are_not_counted() {
    let mut log = Log::new(1 << 24);
    let reader = log.reader();
    let frame = wire::text_frame("ab");
    for i in 0..(STAMPS as u64 + 10) {
        log.append_at(&frame, i);
    }
    let mut counted = 0;
    reader.appended_in(reader.appends(), 0, log.head(), |_| counted += 1);
    assert_eq!(counted, STAMPS);
}
