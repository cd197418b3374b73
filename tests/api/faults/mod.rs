//! Faults of whole processes: Redis killed, frozen, full or restarted
//! (a `redis-server` of the test's own), and signals to the real
//! `flashgate serve` binary. The shared Redis and Postgres are never
//! stopped or flushed.

mod redis_process;
mod signals;
