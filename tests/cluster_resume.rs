//! Resumable sessions across a cluster: a session lives in Redis, so a client that drops
//! from one instance comes back as itself on whichever instance it reaches, with every line
//! it missed, and nobody hears of it. Built only with the `redis` feature; `make test` runs
//! it against a real redis-server (skipped loudly without one, except under CI).
//!
//! The tests are in `cluster_resume/suite.rs`; a build without the feature says so in its output
//! (one ignored test) instead of running nothing in silence.

#[cfg(feature = "redis")]
mod common;
#[cfg(feature = "redis")]
#[path = "cluster_resume/suite.rs"]
mod suite;

#[cfg(not(feature = "redis"))]
#[test]
#[ignore = "needs the redis feature: `make test-cluster` runs these tests"]
fn built_without_the_redis_feature() {}
