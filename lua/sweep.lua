#!lua
-- sweep.lua: give back the units of holds past their deadline (a bounded
-- batch), then report the sale. Used by the background sweeper and by every
-- read of a sale, so a view never counts an expired hold as held.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- ARGV[1] base   ARGV[2] sweep limit
--
-- Returns {'not_loaded'} or
--   {'ok', released, stock, limit, ttl_ms, max_hold_ms, starts, ends,
--    product, sold, held, now_ms}
-- (starts / ends / product are '' when unset).
assert(#KEYS == 3 and #ARGV == 2, 'sweep.lua: wrong arity')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded'}
end
local now = now_ms()
local released = sweep(ARGV[1], now, tonumber(ARGV[2]))
local c = redis.call('HMGET', KEYS[1], 'stock', 'limit', 'ttl_ms', 'max_hold_ms',
  'starts', 'ends', 'product', 'sold', 'held')
return {'ok', released, tonumber(c[1]), tonumber(c[2]), tonumber(c[3]), tonumber(c[4]),
  c[5], c[6], c[7], tonumber(c[8]), tonumber(c[9]), now}
