#!lua
-- extend.lua: push a live hold's deadline out, up to the sale's max hold time
-- counted from the reservation (e.g. while a payment is in flight).
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- KEYS[4] <base>r:<rid>   KEYS[5] <base>h:<rid>
-- ARGV[1] base   ARGV[2] rid   ARGV[3] acting user ('' for the admin)
-- ARGV[4] extension ms ('' for the sale's hold ttl)
--
-- Returns {outcome, user, qty, status, expires_ms, at_ms, 0, '', items}
-- (items: the cart; the whole reservation moves) with outcome
--   'ok'          new deadline in expires_ms
--   'hold_limit'  the hold already runs to its maximum
--   'conflict'    confirmed, cancelled or expired (status says which)
--   'not_found' / 'forbidden' / 'not_loaded'
assert(#KEYS == 5 and #ARGV == 4, 'extend.lua: wrong arity')
local base, rid = ARGV[1], ARGV[2]
local r, now, early = open_transition(base, rid, ARGV[3])
if early then
  return early
end
if r[3] ~= 'held' then
  return rec_reply('conflict', r)
end
local by = tonumber(ARGV[4])
if not by then
  by = tonumber(redis.call('HGET', KEYS[1], 'ttl_ms'))
end
local max_until = tonumber(redis.call('HGET', KEYS[4], 'max_until'))
local expires = math.min(now + by, max_until)
if expires <= tonumber(r[4]) then
  return rec_reply('hold_limit', r)
end
redis.call('HSET', KEYS[4], 'expires', s(expires))
redis.call('ZADD', KEYS[2], s(expires), rid)
redis.call('SET', KEYS[5], '1', 'PX', s(expires - now))
emit(base, 'extended', now, rid, r[1], tonumber(r[2]), nil, r.items)
r[4] = s(expires)
return rec_reply('ok', r)
