-- Admins steer a live sale: pause it, resume it, close it for good; every
-- admin change is audited. (0004 is another change's.)

-- A paused sale refuses new holds and queue joins (its holds can still be
-- confirmed, cancelled, extended). A closed sale ended at closed_at (its
-- ends_at is that time) and stays ended: it cannot be resumed, and its
-- configuration no longer changes. Both are restored into Redis by a
-- rebuild after Redis lost the sale (lua/load.lua).
ALTER TABLE sales
    ADD COLUMN paused boolean NOT NULL DEFAULT false,
    ADD COLUMN closed_at timestamptz;

-- The stream events of those changes (lua/steer.lua), recorded like the others.
ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_kind_check;
ALTER TABLE stock_movements ADD CONSTRAINT stock_movements_kind_check CHECK (kind IN (
    'reserved', 'confirmed', 'cancelled', 'expired', 'extended', 'configured', 'rebuilt',
    'paused', 'resumed', 'closed'));

-- A sale's orders in confirmation order: the admin's pages of confirmed
-- reservations (keyset by (confirmed_at, reservation_id)) and the export.
CREATE INDEX orders_sale_confirmed ON orders (sale_id, confirmed_at, reservation_id);

-- One row per admin change, written in the same transaction as the change
-- (PUT, pause, resume, close), or right after the script for an admin
-- cancel (its change lives in Redis): a cancel answers 503 until its row
-- is written, and its retry writes it, once (the unique index below).
-- Admin token holders are one identity: the request id (X-Request-Id) and
-- the client's address say which request did it.
CREATE TABLE admin_actions (
    id             bigserial   PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    action         text        NOT NULL CHECK (action IN ('configure', 'pause', 'resume', 'close', 'cancel')),
    sale_id        text        NOT NULL,
    reservation_id uuid,
    before         jsonb,
    after          jsonb,
    request_id     text,
    client         text
);
CREATE INDEX admin_actions_sale ON admin_actions (sale_id, id);
CREATE UNIQUE INDEX admin_actions_one_cancel ON admin_actions (reservation_id) WHERE action = 'cancel';
