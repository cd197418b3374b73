-- Sales of several items (variants: sizes, colours) and carts: one sale,
-- several skus, one per-buyer cap across them, holds of every line or of
-- none.

-- The items of a sale of several items, in their order (none for a one-item
-- sale: its stock is sales.stock_limit, as before). A rebuild after Redis
-- lost the sale restores them from here, their units sold from order_items.
CREATE TABLE sale_items (
    sale_id        text        NOT NULL REFERENCES sales (sale_id),
    sku            text        NOT NULL CHECK (sku ~ '^[A-Za-z0-9_-]{1,64}$'),
    position       integer     NOT NULL,
    stock          bigint      NOT NULL CHECK (stock >= 0),
    -- A buyer's cap of this item, under the sale's per_user_limit.
    per_user_limit integer     CHECK (per_user_limit > 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sale_id, sku)
);

-- The lines of an order of a sale of several items, written in the same
-- transaction as the order (none for a one-item sale's order).
CREATE TABLE order_items (
    reservation_id uuid    NOT NULL REFERENCES orders (reservation_id),
    sku            text    NOT NULL,
    quantity       integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
);

-- Confirmed units per buyer of each item that has its own cap (what that
-- cap is rebuilt from), beside user_purchases (per sale, across items).
CREATE TABLE user_item_purchases (
    sale_id    text        NOT NULL,
    sku        text        NOT NULL,
    user_id    text        NOT NULL,
    quantity   integer     NOT NULL CHECK (quantity >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sale_id, sku, user_id)
);

-- One movement per line of a cart: `line` numbers them (1..n, 0 for an
-- event without a cart), `sku` names the item (NULL on a one-item sale).
ALTER TABLE stock_movements
    ADD COLUMN line smallint NOT NULL DEFAULT 0,
    ADD COLUMN sku text;
ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_pkey;
ALTER TABLE stock_movements ADD PRIMARY KEY (sale_id, event_id, line);
