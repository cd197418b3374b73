#!lua
-- configure.lua: create a sale or update its configuration.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- ARGV[1] base   ARGV[2] sale id   ARGV[3] mode: 'upsert' (create when
--   absent) or 'update' (the sale is known to Postgres: its Redis state must
--   exist, else it is rebuilt first)
-- ARGV[4..14] the configuration (lib.lua's CONFIG_FIELDS): stock, per-user
--   limit, hold ttl ms, max hold ms, starts ms or '', ends ms or '', product
--   id or '', admission ('open' | 'queue'), admit per sec, admission window
--   ms, queue opens ms or ''
-- ARGV[15] sweep limit
-- ARGV[16] epoch of a state created here (the sale's epoch in Postgres)
--
-- Returns {'created', 0, 0, epoch}, {'updated', sold, held, epoch},
-- {'below', sold, held} (stock < sold + held: nothing changed),
-- {'closed', ends_ms} (an admin closed the sale: its configuration is
-- final, nothing changed) or {'not_loaded'} (mode 'update' and no state).
-- `epoch` is the state's, which Postgres keeps (an 'upsert' that finds
-- state keeps its epoch). A pause (lua/steer.lua) is not configuration:
-- an update keeps it.
assert(#KEYS == 3 and #ARGV == 16, 'configure.lua: wrong arity')
local base = ARGV[1]
local exists = redis.call('EXISTS', KEYS[1]) == 1
if not exists and ARGV[3] == 'update' then
  return {'not_loaded'}
end
local closed = redis.call('HMGET', KEYS[1], 'closed', 'ends')
if (closed[1] or '') ~= '' then
  return {'closed', tonumber(closed[2])}
end
local now = now_ms()
local stock = tonumber(ARGV[4])
local sold, held = 0, 0
local old = nil
if exists then
  sweep(base, now, tonumber(ARGV[15]))
  local c = redis.call('HMGET', KEYS[1], 'sold', 'held')
  sold, held = tonumber(c[1]), tonumber(c[2])
  if stock < sold + held then
    return {'below', sold, held}
  end
  old = queue_fields(base)
else
  redis.call('HSET', KEYS[1], 'id', ARGV[2], 'sold', '0', 'held', '0', 'created', s(now),
    'epoch', ARGV[16])
  old = {queued = false, mark = 0}
end
set_config(KEYS[1], 4, now)
queue_configured(base, now, old)
emit(base, 'configured', now, nil, nil, 0)
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if exists then
  return {'updated', sold, held, epoch}
end
return {'created', 0, 0, epoch}
