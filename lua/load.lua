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
-- ARGV[18..] pairs: user, units bought (confirmed) by that user
--
-- Returns {'loaded'} or {'exists'}.
assert(#KEYS == 4 and #ARGV >= 17 and #ARGV % 2 == 1, 'load.lua: wrong arity')
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists'}
end
local now = now_ms()
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'sold', ARGV[14], 'held', '0', 'created', s(now),
  'epoch', ARGV[15], 'paused', ARGV[16], 'closed', ARGV[17])
set_config(KEYS[1], 3, now)
for i = 18, #ARGV, 2 do
  redis.call('HSET', KEYS[1], 'b:' .. ARGV[i], ARGV[i + 1])
end
queue_configured(ARGV[1], now, nil)
emit(ARGV[1], 'rebuilt', now, nil, nil, 0)
return {'loaded'}
