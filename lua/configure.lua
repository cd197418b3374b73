#!lua
-- configure.lua: create a sale or update its configuration.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- ARGV[1] base   ARGV[2] sale id   ARGV[3] mode: 'upsert' (create when
--   absent) or 'update' (the sale is known to Postgres: its Redis state must
--   exist, else it is rebuilt first)
-- ARGV[4] stock   ARGV[5] per-user limit   ARGV[6] hold ttl ms
-- ARGV[7] max hold ms   ARGV[8] starts ms or ''   ARGV[9] ends ms or ''
-- ARGV[10] product id or ''   ARGV[11] sweep limit
-- ARGV[12] epoch of a state created here (the sale's epoch in Postgres)
--
-- Returns {'created', 0, 0, epoch}, {'updated', sold, held, epoch},
-- {'below', sold, held} (stock < sold + held: nothing changed) or
-- {'not_loaded'} (mode 'update' and no state). `epoch` is the state's,
-- which Postgres keeps (an 'upsert' that finds state keeps its epoch).
assert(#KEYS == 3 and #ARGV == 12, 'configure.lua: wrong arity')
local base = ARGV[1]
local exists = redis.call('EXISTS', KEYS[1]) == 1
if not exists and ARGV[3] == 'update' then
  return {'not_loaded'}
end
local now = now_ms()
local stock = tonumber(ARGV[4])
local sold, held = 0, 0
if exists then
  sweep(base, now, tonumber(ARGV[11]))
  local c = redis.call('HMGET', KEYS[1], 'sold', 'held')
  sold, held = tonumber(c[1]), tonumber(c[2])
  if stock < sold + held then
    return {'below', sold, held}
  end
else
  redis.call('HSET', KEYS[1], 'id', ARGV[2], 'sold', '0', 'held', '0', 'created', s(now),
    'epoch', ARGV[12])
end
redis.call('HSET', KEYS[1], 'stock', ARGV[4], 'limit', ARGV[5], 'ttl_ms', ARGV[6],
  'max_hold_ms', ARGV[7], 'starts', ARGV[8], 'ends', ARGV[9], 'product', ARGV[10],
  'updated', s(now))
emit(base, 'configured', now, nil, nil, 0)
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if exists then
  return {'updated', sold, held, epoch}
end
return {'created', 0, 0, epoch}
