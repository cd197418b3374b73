-- flashgate: the durable record. Redis decides; Postgres remembers.

-- Sale configuration (written by PUT /v1/sales/{id}) and the units sold so
-- far (advanced once per order, in the same transaction as the order row).
CREATE TABLE sales (
    sale_id        text PRIMARY KEY,
    product_id     text,
    stock_limit    bigint      NOT NULL CHECK (stock_limit >= 0),
    per_user_limit integer     NOT NULL CHECK (per_user_limit > 0),
    hold_ttl_secs  integer     NOT NULL CHECK (hold_ttl_secs > 0),
    max_hold_secs  integer     NOT NULL CHECK (max_hold_secs > 0),
    starts_at      timestamptz,
    ends_at        timestamptz,
    sold_count     bigint      NOT NULL DEFAULT 0 CHECK (sold_count >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per confirmed reservation; the primary key makes every writer
-- (the confirm path, the write-behind worker, a replay) idempotent.
CREATE TABLE orders (
    reservation_id uuid        PRIMARY KEY,
    sale_id        text        NOT NULL,
    user_id        text        NOT NULL,
    quantity       integer     NOT NULL CHECK (quantity > 0),
    confirmed_at   timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_sale_user ON orders (sale_id, user_id);

-- Total confirmed units per buyer and sale (what the cap is rebuilt from).
CREATE TABLE user_purchases (
    sale_id    text        NOT NULL,
    user_id    text        NOT NULL,
    quantity   integer     NOT NULL CHECK (quantity >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sale_id, user_id)
);

-- Audit trail: one row per event of a sale's Redis stream, keyed by the
-- stream entry id so a replayed entry changes nothing.
CREATE TABLE stock_movements (
    sale_id        text        NOT NULL,
    event_id       text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('reserved', 'confirmed', 'cancelled', 'expired', 'extended', 'configured', 'rebuilt')),
    reservation_id uuid,
    user_id        text,
    quantity       integer     NOT NULL DEFAULT 0,
    sold_after     bigint,
    held_after     bigint,
    stock_after    bigint,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sale_id, event_id)
);
CREATE INDEX stock_movements_reservation ON stock_movements (reservation_id) WHERE reservation_id IS NOT NULL;
CREATE INDEX stock_movements_sale_time ON stock_movements (sale_id, occurred_at);
