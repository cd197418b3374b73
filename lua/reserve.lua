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
--
-- Returns one of
--   {'ok', rid, qty, expires_ms}            a new hold (or the one this rid
--                                           already made: the call ran twice)
--   {'replay', rid, qty, status, expires_ms} the key was used with this body
--   {'idem_mismatch', original_qty}         the key was used with another body
--   {'not_loaded'}                          the sale has no state in Redis
--   {'not_started', starts_ms}  {'ended', ends_ms}
--   {'paused'}                              an admin paused the sale
--   {'not_admitted', position (0: not in the queue), serving}
--   {'admission_expired', admitted_until_ms}  (queued sales)
--   {'over_limit', per_user_limit}          qty alone exceeds the cap
--   {'user_limit', per_user_limit, held_by_user, bought_by_user}
--   {'sold_out', available}
--   {'busy', earliest_deadline_ms}          the buyer holds ARGV[9] units of
--                                           sales already (the earliest ends then)
-- Everything is checked before the first write: a refusal changes nothing
-- but the bounded sweep of expired holds (of the sale and of the buyer).
assert(#KEYS == 8 and #ARGV == 10, 'reserve.lua: wrong arity')
local base, rid, user = ARGV[1], ARGV[2], ARGV[3]
local qty = tonumber(ARGV[4])
local use_idem = ARGV[6] == '1'

-- The sale's config and counters (and the buyer's units), read once: also
-- the check that the sale has state here at all.
local c = redis.call('HMGET', KEYS[1], 'stock', 'limit', 'ttl_ms', 'max_hold_ms',
  'starts', 'ends', 'sold', 'held', 'u:' .. user, 'b:' .. user, 'id', 'epoch', 'admission',
  'paused')
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
  local prev = redis.call('HMGET', KEYS[6], 'rid', 'qty')
  if prev[1] then
    if tonumber(prev[2]) ~= qty then
      return {'idem_mismatch', tonumber(prev[2])}
    end
    local r = load_rec(base, prev[1], now)
    if not r then
      return {'replay', prev[1], qty, 'expired', 0}
    end
    local status = r[3]
    if r[6] then status = 'expired' end
    return {'replay', prev[1], tonumber(r[2]), status, tonumber(r[4])}
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
if qty > limit then
  return {'over_limit', limit}
end
local sold, held = tonumber(c[7]), tonumber(c[8])
local uheld, ubought = tonumber(c[9] or '0'), tonumber(c[10] or '0')
if uheld + ubought + qty > limit then
  return {'user_limit', limit, uheld, ubought}
end
if sold + held + qty > stock then
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
redis.call('HSET', KEYS[1], 'held', s(held + qty), 'u:' .. user, s(uheld + qty))
redis.call('HSET', KEYS[4], 'user', user, 'qty', s(qty), 'status', 'held',
  'created', s(now), 'expires', s(expires), 'max_until', s(now + max_hold))
-- The record outlives the longest the hold can last (extended up to
-- max_hold), by a day, whatever the configured record ttl.
redis.call('PEXPIRE', KEYS[4], s(math.max(tonumber(ARGV[8]), max_hold + 86400000)))
redis.call('SET', KEYS[5], '1', 'PX', s(ttl))
redis.call('ZADD', KEYS[2], s(expires), rid)
if use_idem then
  redis.call('HSET', KEYS[6], 'rid', rid, 'qty', s(qty))
  redis.call('PEXPIRE', KEYS[6], ARGV[7])
end
if cap > 0 then
  hold_counted(KEYS[7], ARGV[10], expires, now, nil, counted)
end
emit(base, 'reserved', now, rid, user, qty, {c[11], c[7], s(held + qty), c[1], c[12]})
if c[13] == 'queue' and sold + held + qty >= stock then
  queue_pace(base, now)
end
return {'ok', rid, qty, expires}
