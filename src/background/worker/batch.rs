//! One batch of a sale's stream: written to Postgres in one transaction,
//! then acknowledged and deleted; an entry that cannot be applied is parked
//! in the sale's dead-letter stream instead of blocking the rest.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use redis::streams::{StreamId, StreamPendingCountReply};
use redis::AsyncCommands;

use super::{Worker, WorkerError, GROUP};
use crate::gate::SaleKeys;
use crate::ids::SaleId;
use crate::store::{Event, EventKind};

impl Worker {
    /// Writes a batch and acknowledges it. Entries that cannot be parsed go
    /// straight to the dead letters; a batch Postgres rejects (not a
    /// connection problem) is retried entry by entry to isolate the culprit.
    pub(super) async fn apply(
        &mut self,
        sale: &SaleId,
        keys: &SaleKeys,
        entries: Vec<StreamId>,
    ) -> Result<usize, WorkerError> {
        let n = entries.len();
        let mut events = Vec::with_capacity(n);
        let mut seen = HashSet::with_capacity(n);
        let mut bad = Vec::new();
        for entry in &entries {
            if entry.map.is_empty() {
                // Deleted while pending (acked elsewhere): just acknowledge it.
                bad.push((entry, None));
                continue;
            }
            match Event::parse(&entry.id, &entry.map) {
                Ok(e) if seen.insert(e.event_id.clone()) => events.push(e),
                Ok(_) => {}
                Err(reason) => bad.push((entry, Some(reason.to_string()))),
            }
        }
        for (entry, reason) in bad {
            match reason {
                Some(reason) => self.dead_letter(sale, keys, entry, &reason).await?,
                None => self.ack(keys, std::slice::from_ref(&entry.id)).await?,
            }
        }
        match self.store.apply_events(&events).await {
            Ok(recorded) => {
                self.status.postgres_ok.store(true, Ordering::Relaxed);
                stale(sale, &recorded.stale);
                self.ack_written(keys, &events, &recorded.stale).await?;
                self.status
                    .events_written
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                crate::metrics::write_behind_batch(events.len());
                tracing::debug!(sale = %sale, events = events.len(), "batch written");
                Ok(n)
            }
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => {
                tracing::warn!(sale = %sale, error = %e, cause = ?std::error::Error::source(&e), "batch rejected by Postgres; applying entry by entry");
                let by_id: HashMap<&str, &StreamId> =
                    entries.iter().map(|s| (s.id.as_str(), s)).collect();
                for event in &events {
                    match self.store.apply_events(std::slice::from_ref(event)).await {
                        Ok(recorded) => {
                            stale(sale, &recorded.stale);
                            self.ack_written(keys, std::slice::from_ref(event), &recorded.stale)
                                .await?
                        }
                        Err(e) if e.is_transient() => return Err(e.into()),
                        Err(e) => {
                            let deliveries = self.deliveries(keys, &event.event_id).await?;
                            if deliveries >= self.cfg.max_deliveries {
                                if let Some(entry) = by_id.get(event.event_id.as_str()) {
                                    self.dead_letter(
                                        sale,
                                        keys,
                                        entry,
                                        &format!("{e}: {:?}", std::error::Error::source(&e)),
                                    )
                                    .await?;
                                }
                            }
                        }
                    }
                }
                Ok(n)
            }
        }
    }

    async fn deliveries(&mut self, keys: &SaleKeys, id: &str) -> Result<u64, WorkerError> {
        let reply: StreamPendingCountReply = self
            .conn
            .xpending_count(keys.events(), GROUP, id, id, 1)
            .await?;
        Ok(reply
            .ids
            .first()
            .map(|p| p.times_delivered as u64)
            .unwrap_or(0))
    }

    async fn ack<S: AsRef<str>>(&mut self, keys: &SaleKeys, ids: &[S]) -> Result<(), WorkerError> {
        self.ack_and_forget(keys, ids, &[]).await
    }

    /// Acknowledges events Postgres has, and drops the Redis records they
    /// made final (when configured), in one step: the batch's path and the
    /// event-by-event path after a rejected batch alike.
    async fn ack_written(
        &mut self,
        keys: &SaleKeys,
        events: &[Event],
        stale: &[uuid::Uuid],
    ) -> Result<(), WorkerError> {
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        let done = if self.cfg.drop_final_records {
            let audited = self.audited(events).await;
            finished(keys, events, stale, &audited)
        } else {
            Vec::new()
        };
        self.ack_and_forget(keys, &ids, &done).await
    }

    /// The admin cancels among `events` whose audit row is written, read
    /// after their events committed (see `finished`). On an error none is:
    /// their records stay (until `FLASHGATE_RECORD_TTL_SECS`, or until the
    /// cancel's retry drops them, see `Service::act`).
    async fn audited(&self, events: &[Event]) -> HashSet<uuid::Uuid> {
        let rids: Vec<uuid::Uuid> = events
            .iter()
            .filter(|e| e.kind == EventKind::Cancelled && e.by_admin == Some(true))
            .filter_map(|e| e.reservation_id)
            .collect();
        match self.store.audited_cancels(&rids).await {
            Ok(audited) => audited,
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::chain(&e), "could not read which admin cancels are audited; their records stay in Redis for now");
                HashSet::new()
            }
        }
    }

    /// Acknowledges and deletes `ids`, and drops the reservation records
    /// `records` (final, and now in Postgres), in one atomic step.
    async fn ack_and_forget<S: AsRef<str>>(
        &mut self,
        keys: &SaleKeys,
        ids: &[S],
        records: &[String],
    ) -> Result<(), WorkerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
        // Acknowledge and delete together: the stream only holds unwritten work.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .xack(keys.events(), GROUP, &ids)
            .xdel(keys.events(), &ids);
        if !records.is_empty() {
            pipe.unlink(records);
        }
        let _: () = pipe.query_async(&mut self.conn).await?;
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        sale: &SaleId,
        keys: &SaleKeys,
        entry: &StreamId,
        reason: &str,
    ) -> Result<(), WorkerError> {
        tracing::error!(sale = %sale, entry = %entry.id, reason, "write-behind entry moved to the dead-letter stream");
        let mut fields: Vec<(String, Vec<u8>)> = vec![
            ("original_id".into(), entry.id.clone().into_bytes()),
            ("reason".into(), reason.as_bytes().to_vec()),
        ];
        for (k, v) in &entry.map {
            if let redis::Value::BulkString(b) = v {
                fields.push((format!("f_{k}"), b.clone()));
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .xadd(keys.dead_letters(), "*", &fields)
            .xack(keys.events(), GROUP, &[&entry.id])
            .xdel(keys.events(), &[&entry.id]);
        let _: () = pipe.query_async(&mut self.conn).await?;
        self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
        crate::metrics::dead_lettered();
        Ok(())
    }
}

/// The records of the reservations this batch made final in Postgres:
/// confirmed (and recorded, not refused as stale), expired, or cancelled.
/// Redis need not keep them: a lookup of a reservation Redis does not know
/// reads Postgres (`Service::recorded`). An admin's cancel is dropped only
/// once its audit row is written too (`audited`): the retry of a cancel
/// whose audit failed reads the record, and Postgres says `by_admin` only
/// for an audited one. A cancel whose event does not say who cancelled
/// (written before the field existed) stays until its TTL.
fn finished(
    keys: &SaleKeys,
    events: &[Event],
    stale: &[uuid::Uuid],
    audited: &HashSet<uuid::Uuid>,
) -> Vec<String> {
    events
        .iter()
        .filter(|e| match (e.kind, e.reservation_id) {
            (EventKind::Expired, _) => true,
            (EventKind::Confirmed, Some(r)) => !stale.contains(&r),
            (EventKind::Cancelled, Some(r)) => match e.by_admin {
                Some(false) => true,
                Some(true) => audited.contains(&r),
                None => false,
            },
            _ => false,
        })
        .filter_map(|e| e.reservation_id.map(|rid| keys.reservation(&rid)))
        .collect()
}

/// Confirms of a lost Redis state that Postgres refused (see
/// `Store::record_orders`): their units were offered again by the rebuild.
fn stale(sale: &SaleId, rids: &[uuid::Uuid]) {
    if !rids.is_empty() {
        crate::metrics::stale_orders("write_behind", rids.len());
        tracing::warn!(sale = %sale, reservations = ?rids, "confirmed events of a lost Redis state not recorded: the sale was rebuilt from Postgres first");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use redis::Value;

    use super::*;

    fn event(kind: &str, rid: &uuid::Uuid, by: Option<&str>) -> Event {
        let rid = rid.to_string();
        let mut pairs = vec![
            ("kind", kind),
            ("sale", "s1"),
            ("rid", rid.as_str()),
            ("user", "u1"),
            ("qty", "1"),
            ("at", "1795422534255"),
        ];
        if let Some(by) = by {
            pairs.push(("by", by));
        }
        let map: HashMap<String, Value> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
            .collect();
        Event::parse("1-0", &map).expect("parse")
    }

    /// Which records a written batch drops: a confirm unless stale, every
    /// expiry, a buyer's cancel, an admin's only once audited, a cancel
    /// that does not say who never; no record for a hold still live.
    #[test]
    fn final_records_dropped_once_written_and_admin_cancels_once_audited() {
        let keys = SaleKeys::new("p", &SaleId::parse("s1").expect("sale id"));
        let ids: Vec<uuid::Uuid> = (0..8).map(|_| uuid::Uuid::new_v4()).collect();
        let events = [
            event("confirmed", &ids[0], None),
            event("confirmed", &ids[1], None),
            event("expired", &ids[2], None),
            event("cancelled", &ids[3], Some("buyer")),
            event("cancelled", &ids[4], Some("admin")),
            event("cancelled", &ids[5], Some("admin")),
            event("cancelled", &ids[6], None),
            event("reserved", &ids[7], None),
        ];
        let audited = HashSet::from([ids[4]]);
        let dropped = finished(&keys, &events, &[ids[1]], &audited);
        let want: Vec<String> = [0, 2, 3, 4]
            .iter()
            .map(|&i| keys.reservation(&ids[i]))
            .collect();
        assert_eq!(dropped, want);
        assert_eq!(events[4].by_admin, Some(true));
        assert_eq!(events[3].by_admin, Some(false));
        assert_eq!(events[6].by_admin, None);
    }
}
