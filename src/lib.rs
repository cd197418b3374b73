//! flashgate: a flash-sale gatekeeper.
//!
//! The rooms, each using only the ones listed before it:
//! - `ids`, `config`, `telemetry`, `metrics`, `domain`, `auth`: the
//!   ground floor (checked ids, settings, logs and metrics, the shared
//!   types, who is calling);
//! - `gate` (Redis: keys, the Lua scripts, typed outcomes) and `store`
//!   (Postgres: sales, orders, stream events);
//! - `service`: a request across Redis and Postgres;
//! - `background`: the write-behind worker, the sweeper, readiness;
//! - `reconcile`: Redis against Postgres, for the CLI;
//! - `admission` and `api`: HTTP (socket admission, handlers, errors);
//! - `startup`: wiring, and `main.rs` the CLI.

pub mod ids;

pub mod config;
pub mod metrics;
pub mod telemetry;

pub mod domain;

pub mod auth;

pub mod gate;
pub mod store;

pub mod service;

pub mod background;

pub mod reconcile;

pub mod admission;
pub mod api;

pub mod startup;
