-- Which incarnation of a sale's Redis state may still write orders.
--
-- Every rebuild of a sale's Redis state from Postgres (after Redis lost its
-- data) starts a new epoch: it locks the sale's row, reads what was sold,
-- loads Redis with epoch + 1 and stores it here in the same transaction.
-- Every order write locks the row (FOR KEY SHARE) and records only orders
-- whose confirm ran in the current epoch: a write still in flight from the
-- lost state (a confirm that answered 503, a write-behind batch read before
-- the loss) can no longer commit a unit the rebuild has offered again.
ALTER TABLE sales ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
