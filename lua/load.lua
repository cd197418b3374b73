#!lua
-- load.lua: rebuild a sale's Redis state from Postgres after Redis lost it
-- (restart without persistence, flush). All at once, so no request ever sees
-- a half-loaded sale; a no-op when the state exists (another instance won).
-- Holds that lived only in Redis are gone: their units are free again.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- ARGV[1] base   ARGV[2] sale id   ARGV[3] stock   ARGV[4] per-user limit
-- ARGV[5] hold ttl ms   ARGV[6] max hold ms   ARGV[7] starts ms or ''
-- ARGV[8] ends ms or ''   ARGV[9] product id or ''   ARGV[10] sold
-- ARGV[11] the new epoch (the caller commits it to Postgres, see
--          migrations/0002)
-- ARGV[12..] pairs: user, units bought (confirmed) by that user
--
-- Returns {'loaded'} or {'exists'}.
assert(#KEYS == 3 and #ARGV >= 11 and #ARGV % 2 == 1, 'load.lua: wrong arity')
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists'}
end
local now = now_ms()
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'stock', ARGV[3], 'limit', ARGV[4],
  'ttl_ms', ARGV[5], 'max_hold_ms', ARGV[6], 'starts', ARGV[7], 'ends', ARGV[8],
  'product', ARGV[9], 'sold', ARGV[10], 'held', '0', 'created', s(now), 'updated', s(now),
  'epoch', ARGV[11])
for i = 12, #ARGV, 2 do
  redis.call('HSET', KEYS[1], 'b:' .. ARGV[i], ARGV[i + 1])
end
emit(ARGV[1], 'rebuilt', now, nil, nil, 0)
return {'loaded'}
