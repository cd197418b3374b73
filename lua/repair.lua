#!lua
-- repair.lua: set a sale's counters to what `flashgate reconcile --fix`
-- computed, only if nothing happened to the sale since it looked (every
-- state change appends to the stream, so an unchanged last entry id means
-- an unchanged sale).
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- ARGV[1] base   ARGV[2] last event id seen ('' = empty stream)
-- ARGV[3] sold   ARGV[4] held   ARGV[5] number of bought pairs n
-- ARGV[6 .. 5+2n] pairs (user, bought)   then k, the number of items of a
-- sale of several items, and k triples (sku, sold, held)   then j, and j
-- quadruples (sku, user, bought, held) of the items with their own cap
-- then pairs (user, held)
--
-- Returns {'repaired'}, {'changed'} (look again) or {'not_loaded'}.
assert(#KEYS == 3 and #ARGV >= 6, 'repair.lua: wrong arity')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded'}
end
local tail = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local last = ''
if tail[1] then last = tail[1][1] end
if last ~= ARGV[2] then
  return {'changed'}
end
local fields = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(fields) do
  local p = string.sub(f, 1, 2)
  local q = string.sub(f, 1, 3)
  if p == 'b:' or p == 'u:' or q == 'ib:' or q == 'iu:' then
    redis.call('HDEL', KEYS[1], f)
  end
end
redis.call('HSET', KEYS[1], 'sold', ARGV[3], 'held', ARGV[4])
local n = tonumber(ARGV[5])
for i = 6, 5 + 2 * n, 2 do
  redis.call('HSET', KEYS[1], 'b:' .. ARGV[i], ARGV[i + 1])
end
local k = tonumber(ARGV[6 + 2 * n])
local items_at = 7 + 2 * n
for i = items_at, items_at + 3 * k - 1, 3 do
  redis.call('HSET', KEYS[1], 'io:' .. ARGV[i], ARGV[i + 1], 'ih:' .. ARGV[i], ARGV[i + 2])
end
local buyers_at = items_at + 3 * k + 1
local j = tonumber(ARGV[buyers_at - 1])
for i = buyers_at, buyers_at + 4 * j - 1, 4 do
  local f = ARGV[i] .. ':' .. ARGV[i + 1]
  if ARGV[i + 2] ~= '0' then
    redis.call('HSET', KEYS[1], 'ib:' .. f, ARGV[i + 2])
  end
  if ARGV[i + 3] ~= '0' then
    redis.call('HSET', KEYS[1], 'iu:' .. f, ARGV[i + 3])
  end
end
for i = buyers_at + 4 * j, #ARGV, 2 do
  redis.call('HSET', KEYS[1], 'u:' .. ARGV[i], ARGV[i + 1])
end
local now = now_ms()
emit(ARGV[1], 'rebuilt', now, nil, nil, 0)
return {'repaired'}
