//! The writer's figures for the admin port, off the path a line takes: what a pass sent,
//! how long it took, and how long each line waited, moved into [`WriterFigures`] once per
//! pass so that counting never costs a send.

use super::*;

impl Pump {
    /// Adds the pass's sends, bytes and time to the writer's figures, in one go.
    pub(super) fn count_pass(&mut self, took: Duration) {
        let figures = &self.writer.figures;
        let (sends, bytes) = mem::take(&mut self.this_pass);
        figures::add(&figures.sends, sends);
        figures::add(&figures.bytes, bytes);
        figures::add(&figures.busy_us, took.as_micros() as u64);
        figures.delay.take(&mut self.delays);
        let clients = self.clients.len() - self.free.len();
        figures::set(&figures.clients, clients as u64);
        figures::set(&figures.blocked, self.blocked as u64);
        figures::set(&figures.furthest_lag, mem::take(&mut self.furthest_lag));
        figures::set(&figures.busy_since_ms, 0);
    }
}

/// Records the delivery delay of each line a send carried, `span` being the log offsets it
/// went from and to: from the line's append to now, or, for a client that came later (a
/// resumed one's replay), from when it came to this writer.
pub(super) fn record_delays(
    delays: &mut Histogram,
    log: &LogReader,
    appends: u64,
    (from, to): (u64, u64),
    added_us: u64,
) {
    if to > from {
        let handed = figures::since_start_us();
        log.appended_in(appends, from, to, |appended| {
            delays.record(handed.saturating_sub(appended.max(added_us)));
        });
    }
}
