//! Every endpoint and every error code of the API table (README), at
//! least once.

mod reservations;
mod sales;
