//! Integration tests: the real service against real Redis and Postgres.
//! One binary; every test isolates itself (fresh database, dropped when it
//! ends, and a key prefix of its own). `support/` is what they stand on.

mod support;

mod admin;
mod admission;
mod audit;
mod bad_input;
mod burst;
mod cluster;
mod contract;
mod durability;
mod faults;
mod group_commit;
mod items;
mod lifecycle;
mod limits;
mod live;
mod model;
mod observability;
mod openapi;
mod pages;
mod proxy_faults;
mod queue;
mod reconcile;
mod recovery;
mod scripts;
mod steer;
