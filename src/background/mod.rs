//! The work no request waits for: the write-behind worker (streams to
//! Postgres), the sweeper (expired holds), the directory of sales they
//! walk, and the readiness they report to.

pub mod directory;
pub mod readiness;
pub mod sweeper;
pub mod worker;
