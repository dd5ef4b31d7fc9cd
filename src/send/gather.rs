//! The gather rule: when a writer sends each line the moment it comes, and when it rests
//! after a pass so that lines gather into fewer sends. A loopback `send` costs about 8 us
//! of CPU whatever it carries, so gathering saves CPU, at the price of latency: it is worth
//! it only for a writer that would otherwise be busy most of its time.

use std::time::{Duration, Instant};

/// A writer rests after a pass only when sending each line at once would keep it busy more
/// than this share of its time: below it, the CPU a rest saves is CPU nobody needed, and
/// the rest would only add latency.
pub const BUSY_SHARE: f64 = 0.5;

/// A busy writer rests this many times as long as its pass took, so that it sends at most a
/// tenth of its time and lines gather meanwhile.
pub const REST_PER_WORK: u32 = 9;

/// The most a writer rests to let lines gather: the latency it may add to a line to save
/// sends. 4 ms keeps 1000 clients' slowest 1% at a hub server's, at under half its CPU per
/// delivery (BENCHMARKS.md, "The slowest 1%").
pub const GATHER_BUDGET: Duration = Duration::from_millis(4);

/// How quickly the writer's estimate of its load follows a change: each pass moves it this
/// share of the way to what the pass measured.
const LOAD_SMOOTHING: f64 = 1.0 / 8.0;

/// When a writer rests: it estimates how busy it would be if it sent each line the moment it
/// arrived, and rests only when that is more than [`BUSY_SHARE`] of its time.
///
/// A pass costs about the same whether its sends carry one line or ten (the system call is
/// the cost), so one pass per line would take `lines x pass` of every `interval`. That
/// estimate does not depend on whether the writer rested, so resting cannot fool it.
#[derive(Default)]
pub struct Gather {
    /// The estimated share of its time, smoothed over passes.
    load: f64,
    /// When the last pass that sent began, and the log's append count then.
    last: Option<(Instant, u64)>,
}

impl Gather {
    /// Called after a pass that sent something, which began at `started` with the log at
    /// `appends` and ended at `ended`. Returns how long to rest before the next pass.
    pub fn rest_after(&mut self, started: Instant, ended: Instant, appends: u64) -> Duration {
        let pass = ended.saturating_duration_since(started);
        if let Some((before, appends_before)) = self.last {
            let interval = started.saturating_duration_since(before).as_secs_f64();
            if interval > 0.0 {
                let lines = appends.saturating_sub(appends_before) as f64;
                let sample = (lines * pass.as_secs_f64() / interval).min(1.0);
                self.load += (sample - self.load) * LOAD_SMOOTHING;
            }
        }
        self.last = Some((started, appends));
        if self.load > BUSY_SHARE {
            (pass * REST_PER_WORK).min(GATHER_BUDGET)
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_busy_just_under_half_its_time_still_sends_at_once() {
        // A pass of 2 ms for each line, a line every 5 ms: 40 % of its time.
        let rest = steady(Duration::from_millis(2), Duration::from_millis(5), 1, 200);
        assert_eq!(rest, Duration::ZERO);
    }

    /// Passes of `pass` each, `lines` lines arriving `every`: the rest after the last one.
    fn steady(pass: Duration, every: Duration, lines: u64, passes: u32) -> Duration {
        let mut gather = Gather::default();
        let start = Instant::now();
        let mut rest = Duration::ZERO;
        for i in 0..passes {
            let began = start + every * i;
            rest = gather.rest_after(began, began + pass, lines * u64::from(i));
        }
        rest
    }

    #[test]
    fn a_writer_with_cpu_to_spare_sends_at_once() {
        // 50 clients, a pass of 0.4 ms per line, a line every 5 ms: 8% of its time.
        let rest = steady(Duration::from_micros(400), Duration::from_millis(5), 1, 200);
        assert_eq!(rest, Duration::ZERO);
    }
    #[test]
    fn a_busy_writer_rests_in_proportion_to_its_pass_up_to_the_budget() {
        // 500 clients, a pass of 4 ms, lines arriving faster than one pass each.
        let rest = steady(Duration::from_millis(4), Duration::from_millis(5), 1, 200);
        assert_eq!(rest, GATHER_BUDGET);
        // Already resting, so each pass carries several lines: still busy, still rests,
        // nine times its pass.
        let rest = steady(
            Duration::from_micros(400),
            Duration::from_millis(10),
            16,
            200,
        );
        assert_eq!(rest, Duration::from_micros(3600));
    }
}
