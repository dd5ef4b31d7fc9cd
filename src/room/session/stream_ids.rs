//! Sessions in a cluster: a line's position is its stream ID, and the room translates
//! between those and offsets in this instance's log, where a session resumed from another
//! instance begins and where a dropped one's owed lines begin.

use super::*;

impl Sessions {
    /// The log offset of the first line at or after `position`: where a session whose
    /// lines begin at that position (in a cluster, a stream ID) begins in this instance's log.
    pub fn offset_of(&self, position: Position, head: u64) -> u64 {
        let from = self.lines.partition_point(|&(p, _)| p < position);
        self.lines.get(from).map_or(head, |&(_, at)| at)
    }

    /// The position of the first line at or after log offset `at`, or the least position a
    /// later line can have when none is kept there yet; `None` while no line is numbered.
    pub fn position_at(&self, at: u64) -> Option<Position> {
        let from = self.lines.partition_point(|&(_, offset)| offset < at);
        match self.lines.get(from) {
            Some(&(position, _)) => Some(position),
            None => self
                .lines
                .back()
                .map(|&(Position(ms, n), _)| Position(ms, n + 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_id_and_a_log_offset_name_the_same_first_line_owed() {
        let mut sessions = Sessions::new(Duration::from_secs(120));
        for (ms, at) in [(10, 0), (10, 100), (12, 250)] {
            let n = if at == 100 { 1 } else { 0 };
            sessions.line(Position(ms, n), at, 0);
        }
        // Offsets: the first line at or after one, or the next line's least ID past them.
        assert_eq!(sessions.position_at(0), Some(Position(10, 0)));
        assert_eq!(sessions.position_at(101), Some(Position(12, 0)));
        assert_eq!(sessions.position_at(251), Some(Position(12, 1)));
        // IDs: the first line at or after one, or the head past every line kept.
        assert_eq!(sessions.offset_of(Position(10, 1), 400), 100);
        assert_eq!(sessions.offset_of(Position(11, 0), 400), 250);
        assert_eq!(sessions.offset_of(Position(12, 1), 400), 400);
        assert_eq!(Sessions::new(Duration::ZERO).position_at(5), None);
    }
}
