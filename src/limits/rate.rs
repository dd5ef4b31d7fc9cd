//! The flood limit: how often one client may speak.
//!
//! Each reader keeps a [`RateLimit`]. A message over the limit is not sent; the sender alone
//! hears why. A client that keeps flooding is closed with 1008.

use std::time::{Duration, Instant};

/// A token bucket: `rate` messages a second on average, bursts up to twice that.
///
/// A client refused again and again, with no second of quiet between refusals, for
/// `flood_close`, is closed.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    /// When the current run of refusals began, and the latest refusal in it.
    flood: Option<(Instant, Instant)>,
    flood_close: Duration,
}

/// A gap this long between refusals ends a flood.
const FLOOD_QUIET: Duration = Duration::from_secs(1);

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Send,
    Refuse,
    Close,
}

impl RateLimit {
    pub fn new(per_second: u32, flood_close: Duration) -> RateLimit {
        let rate = f64::from(per_second);
        RateLimit {
            rate,
            burst: 2.0 * rate,
            tokens: 2.0 * rate,
            refilled: Instant::now(),
            flood: None,
            flood_close,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Send;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Send;
        }
        let start = match self.flood {
            Some((start, latest)) if now.saturating_duration_since(latest) < FLOOD_QUIET => start,
            _ => now,
        };
        self.flood = Some((start, now));
        if now.saturating_duration_since(start) >= self.flood_close {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_of_twice_the_rate_then_refuses() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(20, Duration::from_secs(10));
        for _ in 0..40 {
            assert_eq!(limit.check(t0), Verdict::Send);
        }
        assert_eq!(limit.check(t0), Verdict::Refuse);
        // 50 ms later one token has come back.
        assert_eq!(limit.check(t0 + Duration::from_millis(50)), Verdict::Send);
    }

    #[test]
    fn a_sustained_flood_is_closed_and_a_pause_forgives_it() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(1, Duration::from_secs(3));
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(limit.check(at(0)), Verdict::Send);
        assert_eq!(limit.check(at(0)), Verdict::Send);
        let mut verdicts = Vec::new();
        let mut ms = 10;
        while ms < 3_100 {
            verdicts.push(limit.check(at(ms)));
            ms += 10;
        }
        assert_eq!(verdicts.last(), Some(&Verdict::Close));
        // Quiet for a while: the bucket refills and the flood is forgotten.
        let mut calm = RateLimit::new(1, Duration::from_secs(3));
        calm.check(at(0));
        calm.check(at(0));
        assert_eq!(calm.check(at(10)), Verdict::Refuse);
        assert_eq!(calm.check(at(5_000)), Verdict::Send);
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let mut limit = RateLimit::new(0, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| limit.check(t0) == Verdict::Send));
    }

    /// The verdicts for checks at these milliseconds, rate 1/s, flood_close 3 s. Tokens come
    /// back a quarter at a time at these steps, so every sum is exact.
    fn verdicts(ms: &[u64]) -> Vec<(u64, Verdict)> {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(1, Duration::from_secs(3));
        ms.iter()
            .map(|&ms| (ms, limit.check(t0 + Duration::from_millis(ms))))
            .collect()
    }

    /// Two sends at 0, then a check every 250 ms up to `to`: refused but for a send each
    /// second, when a token is back.
    fn flooding(to: u64) -> Vec<u64> {
        [0, 0].into_iter().chain((250..=to).step_by(250)).collect()
    }

    #[test]
    fn a_flood_closes_once_it_has_lasted_flood_close_not_before() {
        let got = verdicts(&flooding(4_000));
        assert_eq!(got[2], (250, Verdict::Refuse), "the flood starts");
        let closed = got.iter().find(|(_, v)| *v == Verdict::Close);
        assert_eq!(closed, Some(&(3_250, Verdict::Close)));
    }

    #[test]
    fn a_second_of_quiet_ends_a_flood_and_less_does_not() {
        // Refused up to 2.25 s; then at 3.25 s a send (a token is back) and a refusal
        // exactly a second after the last one: a new flood, which has not lasted 3 s by 6 s.
        let mut times = flooding(2_250);
        times.extend([3_250, 3_250]);
        times.extend((3_500..=6_000).step_by(250));
        let got = verdicts(&times);
        assert!(got.iter().any(|g| g.0 > 5_000 && g.1 == Verdict::Refuse));
        assert!(got.iter().all(|(_, v)| *v != Verdict::Close), "{got:?}");
        // Quiet for 750 ms only: the same flood goes on, and closes at 3.25 s.
        let mut times = flooding(2_250);
        times.extend([3_000, 3_000, 3_250]);
        let got: Vec<Verdict> = verdicts(&times).into_iter().map(|g| g.1).collect();
        assert_eq!(
            got[got.len() - 3..],
            [Verdict::Send, Verdict::Refuse, Verdict::Close]
        );
    }
}
