//! Several instances sharing one room through a real redis-server (Debian's), which each
//! test starts on a free port with no persistence. Built only with the `redis` feature;
//! `make test` runs it. Without redis-server it is skipped loudly, except under CI (any
//! non-empty value), where it fails.
//!
//! The tests are in `cluster/suite.rs`; a build without the feature says so in its output
//! (one ignored test) instead of running nothing in silence.

#[cfg(feature = "redis")]
mod common;
#[cfg(feature = "redis")]
#[path = "cluster/suite.rs"]
mod suite;

#[cfg(not(feature = "redis"))]
#[test]
#[ignore = "needs the redis feature: `make test-cluster` runs these tests"]
fn built_without_the_redis_feature() {}
