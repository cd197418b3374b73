//! The sales the background tasks (the sweeper, the write-behind worker)
//! walk: the Redis index of sales, united with the sales Postgres knows.
//!
//! On Redis Cluster the index (`<prefix>:sales`) lives on one node. While
//! that node is away, every sale on the other nodes must keep its sweeper
//! and its write-behind, so the index alone cannot be the list: Postgres'
//! `sales` table (read at most every [`PG_EVERY`]) fills in, and when
//! neither answers the last list read is used.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::gate::Gate;
use crate::ids::SaleId;
use crate::store::Store;

/// Least time between two reads of Postgres' sales.
pub const PG_EVERY: Duration = Duration::from_secs(5);

/// Where the list came from, when a source failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub sales: Vec<SaleId>,
    /// A source that could not be read ("the Redis index: ...").
    pub problem: Option<String>,
}

pub struct Directory {
    gate: Gate,
    store: Option<Store>,
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    from_pg: BTreeSet<SaleId>,
    pg_read: Option<Instant>,
    last: BTreeSet<SaleId>,
    /// The index did not answer: when, and why. It is asked again only
    /// [`PG_EVERY`] later, so a node that hangs costs one timeout per
    /// period, not one per pass.
    index_failed: Option<(Instant, String)>,
}

impl Directory {
    /// `store`: None when only the Redis index is to be walked.
    pub fn new(gate: Gate, store: Option<Store>) -> Self {
        Self {
            gate,
            store,
            known: Mutex::new(Known::default()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every sale known to the index or to Postgres; never fails (the last
    /// good list stands in for a source that does not answer).
    pub async fn sales(&self) -> Listing {
        let mut problems = Vec::new();
        let skip_index = self
            .known()
            .index_failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < PG_EVERY)
            .map(|(_, why)| why.clone());
        let indexed = match skip_index {
            Some(why) => {
                problems.push(why);
                None
            }
            None => match self.gate.indexed_sales().await {
                Ok(ids) => {
                    self.known().index_failed = None;
                    Some(ids)
                }
                Err(e) => {
                    let why = format!("the Redis sales index: {}", crate::telemetry::chain(&e));
                    problems.push(why.clone());
                    self.known().index_failed = Some((Instant::now(), why));
                    None
                }
            },
        };
        let pg_due = self
            .known()
            .pg_read
            .is_none_or(|at| at.elapsed() >= PG_EVERY);
        if let (Some(store), true) = (&self.store, pg_due) {
            match store.list_sales().await {
                Ok(rows) => {
                    let ids = rows
                        .iter()
                        .filter_map(|r| SaleId::parse(&r.sale_id).ok())
                        .collect();
                    let mut k = self.known();
                    k.from_pg = ids;
                    k.pg_read = Some(Instant::now());
                }
                Err(e) => {
                    problems.push(format!("Postgres' sales: {}", crate::telemetry::chain(&e)));
                }
            }
        }
        let mut k = self.known();
        let all: BTreeSet<SaleId> = match indexed {
            Some(ids) => ids.into_iter().chain(k.from_pg.iter().cloned()).collect(),
            // The index did not answer: what Postgres said, and every sale
            // seen before (a sale created while Postgres was down, say).
            None => k.last.iter().chain(k.from_pg.iter()).cloned().collect(),
        };
        k.last.clone_from(&all);
        Listing {
            sales: all.into_iter().collect(),
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }
}
