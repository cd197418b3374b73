//! What the tests stand on, one room per kind of thing:
//!
//! - [`app`]: the service in-process (`Spawn`, `TestApp`), its settings
//!   and buyer tokens; [`calls`]: the calls tests make through it;
//! - [`http`]: answers (status, JSON body, timing) and a raw HTTP/1.1
//!   client for requests reqwest would refuse or normalise;
//! - [`pg`]: a fresh database per test, dropped when the test ends;
//! - [`redis_server`]: a `redis-server` process of a test's own;
//! - [`cluster`]: Redis Cluster nodes as `CLUSTER NODES` shows them, and a
//!   cluster of a test's own on free ports;
//! - [`proxy`]: a TCP fault proxy in front of Redis or Postgres;
//! - [`process`]: the real `flashgate serve` binary as a child process.
//!
//! Test files `use crate::support::*` for the common rooms (app, calls,
//! http, pg) and name the others.

pub mod app;
pub mod calls;
pub mod cluster;
pub mod http;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod redis_server;

pub use app::*;
pub use calls::*;
pub use http::*;
pub use pg::*;
