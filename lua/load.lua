#!lua
-- load.lua: rebuild a sale's Redis state from Postgres after Redis lost it
-- (restart without persistence, flush). All at once, so no request ever sees
-- a half-loaded sale; a no-op when the state exists (another instance won).
-- Holds that lived only in Redis are gone: their units are free again. So is
-- a queued sale's queue: buyers join again, and nobody is admitted at once.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- KEYS[4] <base>queue
-- ARGV[1] base   ARGV[2] sale id
-- ARGV[3..13] the configuration (lib.lua's CONFIG_FIELDS)
-- ARGV[14] sold   ARGV[15] the new epoch (the caller commits it to
--          Postgres, see migrations/0002)
-- ARGV[16] '1' if an admin paused the sale, else '0'
-- ARGV[17] when an admin closed it (ms), '' if not (migrations/0005)
-- ARGV[18] n, the number of items of a sale of several items (0 for one
--          item), then n quadruples: sku, stock, cap ('' for none), sold
-- then m, the number of (item, buyer) totals, then m triples: sku, user,
--          units of the item bought by that user (items with a cap)
-- then pairs: user, units bought (confirmed) by that user
--
-- Returns {'loaded'} or {'exists'}.
assert(#KEYS == 4 and #ARGV >= 19, 'load.lua: wrong arity')
local n = tonumber(ARGV[18])
local at = 19 + 4 * n
local m = tonumber(ARGV[at])
local pairs_at = at + 1 + 3 * m
assert(#ARGV >= pairs_at - 1 and (#ARGV - pairs_at + 1) % 2 == 0, 'load.lua: wrong arity')
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists'}
end
local now = now_ms()
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'sold', ARGV[14], 'held', '0', 'created', s(now),
  'epoch', ARGV[15], 'paused', ARGV[16], 'closed', ARGV[17])
set_config(KEYS[1], 3, now)
if n > 0 then
  local skus = {}
  for i = 19, at - 1, 4 do
    local sku = ARGV[i]
    skus[#skus + 1] = sku
    redis.call('HSET', KEYS[1], 'is:' .. sku, ARGV[i + 1], 'il:' .. sku, ARGV[i + 2],
      'io:' .. sku, ARGV[i + 3], 'ih:' .. sku, '0')
  end
  redis.call('HSET', KEYS[1], 'items', table.concat(skus, ','))
end
for i = at + 1, pairs_at - 1, 3 do
  redis.call('HSET', KEYS[1], 'ib:' .. ARGV[i] .. ':' .. ARGV[i + 1], ARGV[i + 2])
end
for i = pairs_at, #ARGV, 2 do
  redis.call('HSET', KEYS[1], 'b:' .. ARGV[i], ARGV[i + 1])
end
queue_configured(ARGV[1], now, nil)
emit(ARGV[1], 'rebuilt', now, nil, nil, 0)
return {'loaded'}
