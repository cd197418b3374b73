#!lua flags=no-writes
-- inspect.lua: one consistent read of a sale for `flashgate reconcile`.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- ARGV[1] base
--
-- Returns {'not_loaded'} or
--   {'ok', now_ms, last_event_id, sale_fields, live_holds, pending_confirms}
-- sale_fields: the sale hash as a flat list (field, value, ...)
-- live_holds: flat list (user, qty, items) of held, unexpired reservations
-- pending_confirms: flat list (rid, user, qty, at_ms, epoch, items) of
--   `confirmed` events still in the stream (not yet written to Postgres and
--   acknowledged)
-- (items: the cart 'sku:qty,...' of a sale of several items, else '')
assert(#KEYS == 3 and #ARGV == 1, 'inspect.lua: wrong arity')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded'}
end
local base = ARGV[1]
local now = now_ms()
local live = {}
for _, rid in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local r = load_rec(base, rid, now)
  if r and r[3] == 'held' and not r[6] then
    live[#live + 1] = r[1]
    live[#live + 1] = r[2]
    live[#live + 1] = r.items
  end
end
local pending = {}
local last = ''
for _, e in ipairs(redis.call('XRANGE', KEYS[3], '-', '+')) do
  last = e[1]
  local f = {}
  for i = 1, #e[2], 2 do
    f[e[2][i]] = e[2][i + 1]
  end
  if f['kind'] == 'confirmed' then
    pending[#pending + 1] = f['rid']
    pending[#pending + 1] = f['user']
    pending[#pending + 1] = f['qty']
    pending[#pending + 1] = f['at'] or '0'
    pending[#pending + 1] = f['epoch'] or '0'
    pending[#pending + 1] = f['items'] or ''
  end
end
local tail = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if tail[1] then last = tail[1][1] end
return {'ok', now, last, redis.call('HGETALL', KEYS[1]), live, pending}
