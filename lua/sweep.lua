#!lua
-- sweep.lua: give back the units of holds past their deadline (a bounded
-- batch), then report the sale. Used by the background sweeper and by every
-- read of a sale, so a view never counts an expired hold as held.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- KEYS[4] <base>queue
-- ARGV[1] base   ARGV[2] sweep limit
--
-- Returns {'not_loaded'} or
--   {'ok', released, now_ms, sold, held, version, paused, joined, serving,
--    closed, config..., items}
-- with config the sale's CONFIG_FIELDS (lib.lua) in their order (starts,
-- ends, product and queue_opens are '' when unset); joined and serving are
-- the queue's (0 for an open sale); closed: when an admin closed the sale
-- (ms), '' if not. items: a sale of several items' items, flat (sku, stock,
-- cap ('' for none), sold, held, ...), in their order; empty for one item.
assert(#KEYS == 4 and #ARGV == 2, 'sweep.lua: wrong arity')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded'}
end
local now = now_ms()
local released = sweep(ARGV[1], now, tonumber(ARGV[2]))
local c = redis.call('HMGET', KEYS[1], 'sold', 'held', 'version', 'paused', 'closed')
local joined, serving = 0, 0
local q = queue_fields(ARGV[1])
if q.queued then
  joined = redis.call('ZCARD', KEYS[4])
  serving = math.min(admitted(q, now), joined)
end
local out = {'ok', released, now, tonumber(c[1]), tonumber(c[2]), tonumber(c[3] or '0'),
  c[4] == '1' and 1 or 0, joined, serving, c[5] or ''}
for _, v in ipairs(redis.call('HMGET', KEYS[1], unpack(CONFIG_FIELDS))) do
  out[#out + 1] = v or ''
end
local items = {}
for _, sku in ipairs(item_list(KEYS[1])) do
  local f = redis.call('HMGET', KEYS[1], 'is:' .. sku, 'il:' .. sku, 'io:' .. sku, 'ih:' .. sku)
  items[#items + 1] = sku
  items[#items + 1] = f[1] or '0'
  items[#items + 1] = f[2] or ''
  items[#items + 1] = f[3] or '0'
  items[#items + 1] = f[4] or '0'
end
out[#out + 1] = items
return out
