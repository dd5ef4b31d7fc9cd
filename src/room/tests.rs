//! The nickname draw at its edges: a clash, every name taken, the whole range.

use super::*;

fn room() -> Room {
    Room::new(
        [Log::new(1 << 20), Log::new(1 << 20)],
        Vec::new(),
        Order::local(),
        Duration::from_secs(120),
        Trace::new(false),
        Arc::default(),
    )
}

#[test]
fn a_clash_is_drawn_again_until_a_free_number_comes_up() {
    let mut room = room();
    // Every number but one is in use: a first draw clashes 99,999 times in 100,000.
    let free = 31_337;
    room.taken
        .extend((0..NICKNAME_SPACE).filter(|&n| n != free));
    assert_eq!(room.free_number(), Some(free));
    assert_eq!(
        room.taken.len(),
        NICKNAME_SPACE as usize,
        "and it is taken now"
    );
}

#[test]
fn with_every_name_taken_a_newcomer_is_refused_at_once() {
    let mut room = room();
    room.taken.extend(0..NICKNAME_SPACE);
    let started = Instant::now();
    assert_eq!(room.free_number(), None);
    assert_eq!(room.taken.len(), NICKNAME_SPACE as usize);
    // A scan of the whole table, not a wait on chance: well under a second even
    // unoptimised (a timing decides nothing here but a hang).
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn numbers_are_drawn_from_the_whole_range_and_never_twice() {
    let mut room = room();
    let drawn: Vec<u32> = (0..1000).filter_map(|_| room.free_number()).collect();
    assert_eq!(drawn.len(), 1000);
    assert!(drawn.iter().all(|&n| n < NICKNAME_SPACE));
    assert_eq!(drawn.iter().collect::<HashSet<_>>().len(), drawn.len());
    // Of 1000 uniform draws, none in the top or bottom tenth: 2 x 0.9^1000, never.
    assert!(drawn.iter().any(|&n| n >= 90_000), "none of the highest");
    assert!(drawn.iter().any(|&n| n < 10_000), "none of the lowest");
}

#[test]
fn a_half_full_room_still_draws_at_random() {
    let mut room = room();
    // Every even number is taken: the most a room holds (`config::MOST_CLIENTS`).
    room.taken.extend((0..NICKNAME_SPACE).step_by(2));
    let drawn: Vec<u32> = (0..1000).filter_map(|_| room.free_number()).collect();
    assert_eq!(drawn.len(), 1000);
    assert!(drawn.iter().all(|n| n % 2 == 1));
    // A scan from one start would hand out neighbours; draws spread over the range.
    assert!(drawn.iter().any(|&n| n >= 90_000) && drawn.iter().any(|&n| n < 10_000));
}

#[test]
fn a_writer_is_stuck_only_past_three_seconds_in_one_pass() {
    assert!(!pass_overran(0, 10_000), "not in a pass");
    assert!(!pass_overran(5_000, 5_010), "in a short pass");
    assert!(!pass_overran(5_000, 8_000), "at the bound");
    assert!(pass_overran(5_000, 8_001), "past it");
}
