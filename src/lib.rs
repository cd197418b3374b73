//! flashgate: a flash-sale gatekeeper.
//!
//! Reading order: `gate` (Redis keys, the Lua scripts, typed outcomes) →
//! `service` (a request across Redis and Postgres) → `api` (HTTP) →
//! `store` (Postgres and the write-behind worker) → `startup`.

pub mod admission;
pub mod api;
pub mod auth;
pub mod config;
pub mod directory;
pub mod error;
pub mod gate;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod readiness;
pub mod reconcile;
pub mod service;
pub mod startup;
pub mod store;
pub mod sweeper;
pub mod telemetry;
