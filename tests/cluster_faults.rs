//! The cluster under the faults real Redis deployments have, each made for real: Redis
//! stopped (a blackhole, a long fork), restarted without its data, made a read-only replica
//! (a failover); an instance stopped long enough to be taken for dead; a stream trimmed
//! under an instance that fell behind. Built only with the `redis` feature.
//!
//! The tests are in `cluster_faults/suite.rs`; a build without the feature says so in its output
//! (one ignored test) instead of running nothing in silence.

#[cfg(feature = "redis")]
mod common;
#[cfg(feature = "redis")]
#[path = "cluster_faults/suite.rs"]
mod suite;

#[cfg(not(feature = "redis"))]
#[test]
#[ignore = "needs the redis feature: `make test-cluster` runs these tests"]
fn built_without_the_redis_feature() {}
