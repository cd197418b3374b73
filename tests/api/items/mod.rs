//! Sales of several items (variants) and carts: one sale, several skus,
//! one per-buyer cap across them, every line of a cart held or none.
//!
//! - `contract.rs`: the API of items and carts, one answer at a time;
//! - `burst.rs`: hundreds of concurrent carts, counted exactly;
//! - `rebuild.rs`: a sale of several items rebuilt after Redis lost it;
//! - `views.rs`: the event stream and the admin pages show the items.

mod burst;
mod contract;
mod rebuild;
mod views;
