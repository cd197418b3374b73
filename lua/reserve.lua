#!lua
-- reserve.lua: hold `qty` units of a sale for one buyer, or say why not.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- KEYS[4] <base>r:<rid>   KEYS[5] <base>h:<rid>
-- KEYS[6] <base>idem:<len(user)>:<user>:<key>  (any key of the sale when
--         ARGV[6] == '0')
-- KEYS[7] <prefix>:{u:<user>}:active, the buyer's active holds across sales
--         (any key of the sale when ARGV[9] == '0': on Redis Cluster it sits
--         in another slot, and the caller runs admit.lua after this script)
-- KEYS[8] <base>queue, the sale's fair queue (read when its admission is
--         'queue')
-- ARGV[1] base   ARGV[2] rid (fresh, made by the caller)   ARGV[3] user
-- ARGV[4] qty    ARGV[5] sweep limit   ARGV[6] '1' to use the idempotency key
-- ARGV[7] idempotency key ttl ms   ARGV[8] reservation record ttl ms (at
--         least the sale's max hold + a day is used)
-- ARGV[9] the buyer's cap of active holds across sales, '0' for none
-- ARGV[10] the hold's member in KEYS[7]: '<sale>|<rid>'
-- ARGV[11..] a cart, on a sale of several items: pairs sku, quantity (skus
--         distinct and sorted, so one cart has one spelling; ARGV[4] is
--         their total). None for `{"quantity": n}` on a one-item sale.
--
-- Returns one of
--   {'ok', rid, qty, expires_ms}            a new hold (or the one this rid
--                                           already made: the call ran twice)
--   {'replay', rid, qty, status, expires_ms, items} the key was used with
--                                           this body (items: its cart)
--   {'idem_mismatch', original_qty}         the key was used with another body
--   {'no_items'}                            a cart, on a one-item sale
--   {'items_required'}                      no cart, on a sale of several items
--   {'unknown_sku', sku}                    a cart line names no item of the sale
--   {'not_loaded'}                          the sale has no state in Redis
--   {'not_started', starts_ms}  {'ended', ends_ms}
--   {'paused'}                              an admin paused the sale
--   {'not_admitted', position (0: not in the queue), serving}
--   {'admission_expired', admitted_until_ms}  (queued sales)
--   {'over_limit', per_user_limit}          qty alone exceeds the cap (a
--                                           cart over it is a user_limit)
--   {'user_limit', per_user_limit, held_by_user, bought_by_user}
--   {'item_limit', sku, item_limit, held_by_user, bought_by_user}
--                                           a line exceeds its item's own cap
--   {'sold_out', available, sku, requested, available_of_sku, ...}
--                                           (a cart: every line short of units)
--   {'busy', earliest_deadline_ms}          the buyer holds ARGV[9] units of
--                                           sales already (the earliest ends then)
-- Everything is checked before the first write: a refusal changes nothing
-- but the bounded sweep of expired holds (of the sale and of the buyer).
assert(#KEYS == 8 and #ARGV >= 10 and #ARGV % 2 == 0, 'reserve.lua: wrong arity')
local base, rid, user = ARGV[1], ARGV[2], ARGV[3]
local qty = tonumber(ARGV[4])
local use_idem = ARGV[6] == '1'
local cart = {}
for i = 11, #ARGV, 2 do
  cart[#cart + 1] = ARGV[i] .. ':' .. ARGV[i + 1]
end
cart = table.concat(cart, ',')

-- The sale's config and counters (and the buyer's units), read once: also
-- the check that the sale has state here at all.
local c = redis.call('HMGET', KEYS[1], 'stock', 'limit', 'ttl_ms', 'max_hold_ms',
  'starts', 'ends', 'sold', 'held', 'u:' .. user, 'b:' .. user, 'id', 'epoch', 'admission',
  'paused', 'items')
if not c[1] then
  return {'not_loaded'}
end
local now = now_ms()

-- This very call again (the cluster client sends a call again when its
-- connection dropped, and it may have run): the hold it made, counted once.
local again = redis.call('HMGET', KEYS[4], 'qty', 'expires')
if again[1] then
  return {'ok', rid, tonumber(again[1]), tonumber(again[2])}
end

if use_idem then
  local prev = redis.call('HMGET', KEYS[6], 'rid', 'qty', 'cart')
  if prev[1] then
    if tonumber(prev[2]) ~= qty or (prev[3] or '') ~= cart then
      return {'idem_mismatch', tonumber(prev[2])}
    end
    local r = load_rec(base, prev[1], now)
    if not r then
      return {'replay', prev[1], qty, 'expired', 0, cart}
    end
    local status = r[3]
    if r[6] then status = 'expired' end
    return {'replay', prev[1], tonumber(r[2]), status, tonumber(r[4]), r.items}
  end
end

if sweep(base, now, tonumber(ARGV[5])) > 0 then
  -- Units came back: read the counters again.
  local after = redis.call('HMGET', KEYS[1], 'sold', 'held', 'u:' .. user)
  c[7], c[8], c[9] = after[1], after[2], after[3]
end

local stock, limit, ttl, max_hold = tonumber(c[1]), tonumber(c[2]), tonumber(c[3]), tonumber(c[4])
if c[5] ~= '' and now < tonumber(c[5]) then
  return {'not_started', tonumber(c[5])}
end
if c[6] ~= '' and now >= tonumber(c[6]) then
  return {'ended', tonumber(c[6])}
end
if c[14] == '1' then
  return {'paused'}
end
if c[13] == 'queue' then
  -- A queued sale: only a buyer whose place has come, within its window.
  local q = queue_fields(base)
  local open = admitted(q, now)
  local rank = redis.call('ZRANK', KEYS[8], user)
  local serving = math.min(open, redis.call('ZCARD', KEYS[8]))
  if not rank or rank + 1 > open then
    return {'not_admitted', rank and rank + 1 or 0, serving}
  end
  local until_ms = admitted_at(q, rank + 1) + q.window
  if now >= until_ms then
    return {'admission_expired', until_ms}
  end
end
local multi = (c[15] or '') ~= ''
if cart ~= '' and not multi then
  return {'no_items'}
end
if cart == '' and multi then
  return {'items_required'}
end
-- A cart's lines with their item's counters and caps (read after the sweep).
local lines = {}
for i = 11, #ARGV, 2 do
  local sku = ARGV[i]
  local f = redis.call('HMGET', KEYS[1], 'is:' .. sku, 'io:' .. sku, 'ih:' .. sku, 'il:' .. sku)
  if not f[1] then
    return {'unknown_sku', sku}
  end
  lines[#lines + 1] = {sku = sku, q = tonumber(ARGV[i + 1]), stock = tonumber(f[1]),
    sold = tonumber(f[2] or '0'), held = tonumber(f[3] or '0'), cap = tonumber(f[4] or '')}
end
if qty > limit and not multi then
  return {'over_limit', limit}
end
local sold, held = tonumber(c[7]), tonumber(c[8])
local uheld, ubought = tonumber(c[9] or '0'), tonumber(c[10] or '0')
if uheld + ubought + qty > limit then
  return {'user_limit', limit, uheld, ubought}
end
for _, l in ipairs(lines) do
  if l.cap then
    local b = redis.call('HMGET', KEYS[1], 'iu:' .. l.sku .. ':' .. user, 'ib:' .. l.sku .. ':' .. user)
    l.uheld, l.ubought = tonumber(b[1] or '0'), tonumber(b[2] or '0')
    if l.uheld + l.ubought + l.q > l.cap then
      return {'item_limit', l.sku, l.cap, l.uheld, l.ubought}
    end
  end
end
if multi then
  local short = {'sold_out', math.max(stock - sold - held, 0)}
  for _, l in ipairs(lines) do
    local avail = math.max(l.stock - l.sold - l.held, 0)
    if l.q > avail then
      short[#short + 1] = l.sku
      short[#short + 1] = l.q
      short[#short + 1] = avail
    end
  end
  if #short > 2 then
    return short
  end
elseif sold + held + qty > stock then
  return {'sold_out', math.max(stock - sold - held, 0)}
end
local cap = tonumber(ARGV[9])
local earliest, counted
if cap > 0 then
  earliest, counted = holds_full(KEYS[7], now, cap)
  if earliest then
    return {'busy', earliest}
  end
end

local expires = now + ttl
-- The sale's counters and every line's, in one HSET.
local counters = {'held', s(held + qty), 'u:' .. user, s(uheld + qty)}
for _, l in ipairs(lines) do
  counters[#counters + 1] = 'ih:' .. l.sku
  counters[#counters + 1] = s(l.held + l.q)
  if l.cap then
    counters[#counters + 1] = 'iu:' .. l.sku .. ':' .. user
    counters[#counters + 1] = s(l.uheld + l.q)
  end
end
redis.call('HSET', KEYS[1], unpack(counters))
local record = {'user', user, 'qty', s(qty), 'status', 'held',
  'created', s(now), 'expires', s(expires), 'max_until', s(now + max_hold)}
if multi then
  record[#record + 1] = 'items'
  record[#record + 1] = cart
end
redis.call('HSET', KEYS[4], unpack(record))
-- The record outlives the longest the hold can last (extended up to
-- max_hold), by a day, whatever the configured record ttl.
redis.call('PEXPIRE', KEYS[4], s(math.max(tonumber(ARGV[8]), max_hold + 86400000)))
redis.call('SET', KEYS[5], '1', 'PX', s(ttl))
redis.call('ZADD', KEYS[2], s(expires), rid)
if use_idem then
  local idem = {'rid', rid, 'qty', s(qty)}
  if multi then
    idem[#idem + 1] = 'cart'
    idem[#idem + 1] = cart
  end
  redis.call('HSET', KEYS[6], unpack(idem))
  redis.call('PEXPIRE', KEYS[6], ARGV[7])
end
if cap > 0 then
  hold_counted(KEYS[7], ARGV[10], expires, now, nil, counted)
end
emit(base, 'reserved', now, rid, user, qty, {c[11], c[7], s(held + qty), c[1], c[12]}, cart)
if c[13] == 'queue' and sold + held + qty >= stock then
  queue_pace(base, now)
end
return {'ok', rid, qty, expires}
