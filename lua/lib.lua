-- lib.lua: helpers shared by every flashgate script.
--
-- Not a script of its own: gate::scripts prepends it to each script's body
-- (right after the script's `#!lua` line), so every script stays one atomic
-- EVALSHA. Key layout of one sale (every key carries the sale's hash tag, so a
-- script touches one Redis Cluster slot):
--   <base>sale        hash    config (id stock limit ttl_ms max_hold_ms starts
--                             ends product created updated admission
--                             admit_rate window_ms queue_opens), counters
--                             (sold held), the epoch this state was created
--                             or rebuilt in (`epoch`, see migrations/0002),
--                             `version` (grows with every change), the
--                             queue's admission clock (q_base q_mark q_run
--                             q_seq), what admins steer (`paused` '1' while
--                             paused; `closed`, ms, once closed: see
--                             steer.lua), per buyer `u:<user>` (held) and
--                             `b:<user>` (bought); a sale of several items
--                             (`items`: their skus, 'S,M,L') also per item
--                             `is:<sku>` (stock) `io:<sku>` (sold) `ih:<sku>`
--                             (held) `il:<sku>` (its per-buyer cap, '' for
--                             none) and, for an item with a cap, per buyer
--                             `iu:<sku>:<user>` (held) `ib:<sku>:<user>`
--                             (bought); `stock` `sold` `held` `u:` `b:` are
--                             then the sums over its items. A sku is 1-64 of
--                             [A-Za-z0-9_-] (no ':' nor ','): no field of an
--                             item can be another's or a buyer's
--   <base>holds       zset    reservation id -> hold deadline (ms, Redis clock)
--   <base>events      stream  one entry per state change, for the worker
--   <base>r:<rid>     hash    reservation record (user qty status created
--                             expires max_until at; by: who cancelled it;
--                             items: the cart 'sku:qty,sku:qty' of a sale of
--                             several items, qty its total)
--   <base>h:<rid>     string  the live hold, expiring by PX at its deadline
--   <base>queue       zset    a queued sale's buyers -> place (see below)
--   <base>idem:<len(user)>:<user>:<key>  hash  Idempotency-Key -> rid, qty,
--                             cart (the record's items, '' for none)
--                             (the length keeps buyers `a:b` + key `k` and
--                             `a` + key `b:k` apart)
-- where <base> = "<prefix>:{<sale_id>}:" is passed as ARGV[1]. A buyer's
-- active holds across sales (the anti-scalping cap) live under the buyer's
-- own hash tag:
--   <prefix>:{u:<user>}:active  zset  '<sale>|<rid>' -> hold deadline (ms)

-- Integer to string without Lua's float formatting (13-digit ms timestamps).
local function s(n)
  return string.format('%d', n)
end

-- Milliseconds on the Redis clock: one clock for every flashgate instance.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Moves the sale's version on: it grows with every change (counters,
-- configuration, pause, queue), across a loss of Redis' data too, as it
-- never falls behind the Redis clock in microseconds.
local function bump(base, now)
  local sale = base .. 'sale'
  local v = tonumber(redis.call('HGET', sale, 'version') or '0')
  local t = now * 1000
  if t <= v then
    t = v + 1
  end
  redis.call('HSET', sale, 'version', s(t))
end

-- Appends one event to the sale's stream, with the counters after the event
-- and the sale's epoch (an order is recorded only in its epoch):
-- `c` = {id, sold, held, stock, epoch} when the caller knows them, else read
-- here; `items`: the reservation's cart, when it has one; `by`: who
-- cancelled ('admin' or 'buyer'), on a `cancelled` event.
local function emit(base, kind, now, rid, user, qty, c, items, by)
  c = c or redis.call('HMGET', base .. 'sale', 'id', 'sold', 'held', 'stock', 'epoch')
  local f = {'kind', kind, 'sale', c[1], 'rid', rid or '', 'user', user or '',
    'qty', s(qty or 0), 'at', s(now),
    'sold', c[2] or '0', 'held', c[3] or '0', 'stock', c[4] or '0',
    'epoch', c[5] or '0'}
  if items and items ~= '' then
    f[#f + 1] = 'items'
    f[#f + 1] = items
  end
  if by then
    f[#f + 1] = 'by'
    f[#f + 1] = by
  end
  redis.call('XADD', base .. 'events', '*', unpack(f))
  bump(base, now)
end

-- A cart 'sku:qty,sku:qty' as a list of {sku, qty}; {} for '' or nil.
local function lines_of(cart)
  local out = {}
  if cart and cart ~= '' then
    for sku, q in string.gmatch(cart, '([^,:]+):(%d+)') do
      out[#out + 1] = {sku, tonumber(q)}
    end
  end
  return out
end

-- The skus of a sale of several items, in their order; {} for one item.
local function item_list(sale)
  local out = {}
  local l = redis.call('HGET', sale, 'items')
  if l and l ~= '' then
    for sku in string.gmatch(l, '[^,]+') do
      out[#out + 1] = sku
    end
  end
  return out
end

-- Gives a cart's held units back to its items (a cancel, an expiry, a
-- confirm with `sold` true, which sells them instead). A buyer's held count
-- of an item (`iu:`) is there only if the item had a cap when the hold was
-- made; a buyer's bought count (`ib:`) moves only for an item with a cap.
local function unhold_lines(sale, user, lines, sold)
  for _, l in ipairs(lines) do
    local sku, q = l[1], l[2]
    redis.call('HINCRBY', sale, 'ih:' .. sku, -q)
    local iu = 'iu:' .. sku .. ':' .. user
    if redis.call('HEXISTS', sale, iu) == 1 and redis.call('HINCRBY', sale, iu, -q) <= 0 then
      redis.call('HDEL', sale, iu)
    end
    if sold then
      redis.call('HINCRBY', sale, 'io:' .. sku, q)
      if (redis.call('HGET', sale, 'il:' .. sku) or '') ~= '' then
        redis.call('HINCRBY', sale, 'ib:' .. sku .. ':' .. user, q)
      end
    end
  end
end

-- Ends a held reservation as `status` (expired / cancelled) and gives its
-- units back. Returns qty, user, items (its cart, '' for none) when units
-- were released, nil otherwise.
local function release_hold(base, rid, status, now)
  local rkey = base .. 'r:' .. rid
  local r = redis.call('HMGET', rkey, 'status', 'user', 'qty', 'items')
  redis.call('ZREM', base .. 'holds', rid)
  if status ~= 'expired' then
    -- An expired hold's key is gone by itself (same deadline). Not naming a
    -- key that may not exist matters on Redis Cluster: while the slot
    -- migrates, a node stops a script at such a key, and this must happen
    -- at the HMGET above (before any write), never between two writes.
    redis.call('DEL', base .. 'h:' .. rid)
  end
  if r[1] ~= 'held' then
    return nil
  end
  local qty = tonumber(r[3])
  local sale = base .. 'sale'
  redis.call('HINCRBY', sale, 'held', -qty)
  if redis.call('HINCRBY', sale, 'u:' .. r[2], -qty) <= 0 then
    redis.call('HDEL', sale, 'u:' .. r[2])
  end
  unhold_lines(sale, r[2], lines_of(r[4]), false)
  redis.call('HSET', rkey, 'status', status, 'at', s(now))
  return qty, r[2], r[4] or ''
end

-- The fair queue of a sale whose admission is 'queue' (lua/queue.lua):
-- <base>queue ranks its buyers by place, a random score in [0, 1) for those
-- who joined before the start (so joining early buys nothing), 1 + n for
-- the n-th after it (first come, first served). The admission clock lives
-- in the sale hash: q_base buyers were admitted by q_mark (ms); while q_run
-- is '1', admit_rate more each second after it. Nothing has to tick: every
-- script computes the clock from Redis' time. It stops while nothing can be
-- sold (sold out, paused) and starts again when units come back.
local function queue_fields(base)
  local f = redis.call('HMGET', base .. 'sale', 'admission', 'starts', 'admit_rate',
    'q_base', 'q_mark', 'q_run', 'window_ms')
  return {queued = f[1] == 'queue', starts = tonumber(f[2] or ''),
    rate = tonumber(f[3] or '1') or 1, qbase = tonumber(f[4] or '0') or 0,
    mark = tonumber(f[5] or '0') or 0, run = f[6] == '1', window = tonumber(f[7] or '0') or 0}
end

-- How many places are admitted at `now`: none before the start.
local function admitted(q, now)
  if q.starts and now < q.starts then
    return 0
  end
  if not q.run or now <= q.mark then
    return q.qbase
  end
  return q.qbase + math.floor((now - q.mark) * q.rate / 1000)
end

-- When place k is admitted by the current clock; its window ends
-- q.window later. Places admitted before the clock last (re)started get a
-- fresh window from then (units came back, the rate changed).
local function admitted_at(q, k)
  if k <= q.qbase then
    return q.mark
  end
  return q.mark + math.ceil((k - q.qbase) * 1000 / q.rate)
end

-- (Re)starts the admission clock at `mark` with `n` places admitted.
local function queue_anchor(base, q, n, mark, run)
  q.qbase, q.mark, q.run = n, mark, run
  redis.call('HSET', base .. 'sale', 'q_base', s(n), 'q_mark', s(mark), 'q_run', run and '1' or '0')
end

-- Stops the admission clock while nothing can be sold (sold out, paused)
-- and starts it again when units come back. Every script that moves the
-- sale's availability calls it.
local function queue_pace(base, now)
  local q = queue_fields(base)
  if not q.queued then
    return
  end
  local c = redis.call('HMGET', base .. 'sale', 'stock', 'sold', 'held', 'paused')
  local open = c[4] ~= '1' and tonumber(c[1]) - tonumber(c[2]) - tonumber(c[3]) > 0
  if open == q.run then
    return
  end
  if q.starts and now < q.starts then
    queue_anchor(base, q, q.qbase, q.mark, open)
  elseif open then
    queue_anchor(base, q, q.qbase, now, true)
  else
    queue_anchor(base, q, admitted(q, now), now, false)
  end
end

-- Sets the admission clock of a queued sale whose configuration was just
-- written (`old`: its queue fields before; nil after a rebuild from
-- Postgres, when the queue is gone and nobody is admitted at once). A
-- clock that runs at an unchanged rate from an unchanged start is kept.
local function queue_configured(base, now, old)
  local q = queue_fields(base)
  if not q.queued then
    return
  end
  if old and old.queued and old.mark > 0 and old.rate == q.rate and old.starts == q.starts then
    queue_anchor(base, q, old.qbase, old.mark, old.run)
  elseif q.starts and now < q.starts then
    queue_anchor(base, q, 1, q.starts, true)
  elseif old and old.queued and old.mark > 0 then
    queue_anchor(base, q, admitted(old, now), now, true)
  elseif old then
    queue_anchor(base, q, 1, now, true)
  else
    queue_anchor(base, q, 0, now, true)
  end
  queue_pace(base, now)
end

-- The configuration fields of the sale hash, in the order the gate sends
-- them (gate/sales.rs: config_args) from ARGV[i] on.
local CONFIG_FIELDS = {'stock', 'limit', 'ttl_ms', 'max_hold_ms', 'starts', 'ends', 'product',
  'admission', 'admit_rate', 'window_ms', 'queue_opens'}
local function set_config(key, i, now)
  local kv = {'updated', s(now)}
  for n, f in ipairs(CONFIG_FIELDS) do
    kv[#kv + 1] = f
    kv[#kv + 1] = ARGV[i + n - 1]
  end
  redis.call('HSET', key, unpack(kv))
end

-- Gives back the units of at most `limit` holds whose deadline has passed.
local function sweep(base, now, limit)
  local due = redis.call('ZRANGE', base .. 'holds', '-inf', s(now), 'BYSCORE', 'LIMIT', 0, limit)
  local released = 0
  for _, rid in ipairs(due) do
    local qty, user, items = release_hold(base, rid, 'expired', now)
    if qty then
      released = released + 1
      emit(base, 'expired', now, rid, user, qty, nil, items)
    end
  end
  if released > 0 then
    queue_pace(base, now)
  end
  return released
end

-- The reply shared by the reservation scripts:
-- {outcome, user, qty, status, expires_ms, at_ms, epoch, by, items}
-- (epoch: the sale's, where the caller records an order; else 0; by: who
-- cancelled it, set by cancel.lua, else ''; items: the cart, '' for none)
local function rec_reply(outcome, r, status, epoch)
  return {outcome, r[1] or '', tonumber(r[2] or '0'), status or r[3] or '',
    tonumber(r[4] or '0'), tonumber(r[5] or '0'), tonumber(epoch or '0'), '', r.items or ''}
end

-- Loads a reservation record as {user, qty, status, expires, at, items =
-- its cart}; the status of a hold past its deadline reads `expired` even
-- before a sweep ran (r[6] is then 'lapsed').
local function load_rec(base, rid, now)
  local x = redis.call('HMGET', base .. 'r:' .. rid, 'user', 'qty', 'status', 'expires', 'at', 'items')
  if not x[3] then
    return nil
  end
  local r = {x[1], x[2], x[3], x[4], x[5]}
  r.items = x[6] or ''
  if r[3] == 'held' and tonumber(r[4]) <= now then
    r[6] = 'lapsed'
  end
  return r
end

-- The opening every transition of a held reservation shares (confirm,
-- cancel, extend): the sale must have state here, the reservation must
-- exist and belong to the acting buyer (`actor`, '' for the admin), and a
-- hold past its deadline is expired now (its units given back) and answered
-- as a conflict. Returns r, now to go on with, or nil, nil, the reply to
-- return at once.
local function open_transition(base, rid, actor)
  if redis.call('EXISTS', base .. 'sale') == 0 then
    return nil, nil, {'not_loaded'}
  end
  local now = now_ms()
  local r = load_rec(base, rid, now)
  if not r then
    return nil, nil, {'not_found'}
  end
  if actor ~= '' and r[1] ~= actor then
    return nil, nil, {'forbidden'}
  end
  if r[6] then
    local qty, user, items = release_hold(base, rid, 'expired', now)
    emit(base, 'expired', now, rid, user, qty, nil, items)
    queue_pace(base, now)
    r[5] = s(now)
    return nil, nil, rec_reply('conflict', r, 'expired')
  end
  return r, now
end

-- The buyer's active-hold set `key` (see above) has room for one more hold
-- under `cap`: returns nil, n (n: members before the new one, maybe some
-- past their deadline); full: the earliest deadline of its live holds.
-- Holds past their deadline are dropped once the set looks full.
local function holds_full(key, now, cap)
  local n = redis.call('ZCARD', key)
  if n >= cap then
    n = n - redis.call('ZREMRANGEBYSCORE', key, '-inf', s(now))
    if n >= cap then
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      return tonumber(first[2]), n
    end
  end
  return nil, n
end

-- Counts (`flag` nil, `n` members before) or re-dates (`flag` 'XX') `member`
-- in the buyer's active-hold set until `deadline`. The set lives as long as
-- its latest hold: a new set gets that TTL, a set that has one (every set
-- gets one when created) only ever a longer one (GT, Redis 7).
local function hold_counted(key, member, deadline, now, flag, n)
  if flag then
    redis.call('ZADD', key, flag, s(deadline), member)
  else
    redis.call('ZADD', key, s(deadline), member)
  end
  local ttl = deadline - now
  if ttl > 0 then
    if n == 0 then
      redis.call('PEXPIRE', key, s(ttl))
    else
      redis.call('PEXPIRE', key, s(ttl), 'GT')
    end
  end
end
