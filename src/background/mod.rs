//! The work no request waits for: the write-behind worker (streams to
//! Postgres), the sweeper (expired holds), the directory of sales they
//! walk, the readiness they report to, and the live views of watched sales
//! (the event stream's upstream).

pub mod directory;
pub mod live;
pub mod readiness;
pub mod sweeper;
pub mod worker;
