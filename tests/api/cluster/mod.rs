//! Redis Cluster: several instances on one cluster, sales spread over the
//! primaries, scripts on every node, a slot migrating, a primary lost
//! mid-burst, a node away.
//!
//! The tests here that need a cluster are `#[ignore]`d, so that a run
//! outside cluster mode shows them as skipped; the cluster leg of
//! `scripts/test` runs them (`FLASHGATE_TEST_REDIS_CLUSTER=1`,
//! `FLASHGATE_TEST_REDIS` = the seed list, see `scripts/cluster`, and the
//! ignored tests included). Those that kill, stop or fail over nodes start
//! and stop a cluster of their own on free ports, so they never disturb
//! the shared one.

mod bursts;
mod failover;
mod migration;
mod node_away;
