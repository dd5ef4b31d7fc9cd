//! A rolling restart nobody notices: two instances sharing a room through a real
//! redis-server, behind a real nginx configured by docs/DEPLOY.md's cluster block, 200
//! resumable clients. Each instance in turn is stopped (SIGTERM) and started again while
//! clients talk. Nobody may hear a leave or a join, every client keeps its name, and every
//! client's transcript is the same, with each line once. Built only with the `redis`
//! feature; skipped loudly without nginx or redis-server, except under CI.
//!
//! The tests are in `rolling_restart/suite.rs`; a build without the feature says so in its output
//! (one ignored test) instead of running nothing in silence.

#[cfg(feature = "redis")]
mod common;
#[cfg(feature = "redis")]
#[path = "rolling_restart/suite.rs"]
mod suite;

#[cfg(not(feature = "redis"))]
#[test]
#[ignore = "needs the redis feature: `make test-cluster` runs these tests"]
fn built_without_the_redis_feature() {}
