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
-- ARGV[17] '1' for a sale of several items (then ARGV[4], the stock, is the
--   sum of theirs), '0' for a one-item sale
-- ARGV[18..] its items: triples sku, stock, per-buyer cap of the item ('' for
--   none). The list is the sale's whole list: an item left out is removed.
--
-- Returns {'created', 0, 0, epoch}, {'updated', sold, held, epoch},
-- {'below', sold, held, sku, stock, sold, held, ...} (a stock below sold +
-- held, of the sale or of the items named, a removed item counting as stock
-- 0: nothing changed), {'shape', sold, held} (a sale with units sold or held
-- cannot change between one item and several), {'cap_added', sku} (an item
-- with units sold or held cannot get a cap it did not have: its buyers'
-- units were not counted), {'closed', ends_ms} (an admin closed the sale:
-- its configuration is final, nothing changed) or {'not_loaded'} (mode
-- 'update' and no state).
-- `epoch` is the state's, which Postgres keeps (an 'upsert' that finds
-- state keeps its epoch). A pause (lua/steer.lua) is not configuration:
-- an update keeps it.
assert(#KEYS == 3 and #ARGV >= 17 and (#ARGV - 17) % 3 == 0, 'configure.lua: wrong arity')
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
local multi = ARGV[17] == '1'
local new, keep = {}, {}
for i = 18, #ARGV, 3 do
  new[#new + 1] = {ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]}
  keep[ARGV[i]] = true
end
local old_items = {}
local sold, held = 0, 0
local old = nil
if exists then
  sweep(base, now, tonumber(ARGV[15]))
  local c = redis.call('HMGET', KEYS[1], 'sold', 'held')
  sold, held = tonumber(c[1]), tonumber(c[2])
  old_items = item_list(KEYS[1])
  if (#old_items > 0) ~= multi and sold + held > 0 then
    return {'shape', sold, held}
  end
  if multi then
    local below, added = {'below', sold, held}, nil
    local function check(sku, n, cap)
      local f = redis.call('HMGET', KEYS[1], 'is:' .. sku, 'io:' .. sku, 'ih:' .. sku, 'il:' .. sku)
      local isold, iheld = tonumber(f[2] or '0'), tonumber(f[3] or '0')
      if n < isold + iheld then
        below[#below + 1] = sku
        below[#below + 1] = n
        below[#below + 1] = isold
        below[#below + 1] = iheld
      end
      if cap ~= '' and (f[4] or '') == '' and isold + iheld > 0 then
        added = added or sku
      end
    end
    for _, it in ipairs(new) do
      check(it[1], it[2], it[3])
    end
    for _, sku in ipairs(old_items) do
      if not keep[sku] then
        check(sku, 0, '')
      end
    end
    if #below > 3 then
      return below
    end
    if added then
      return {'cap_added', added}
    end
  elseif stock < sold + held then
    return {'below', sold, held}
  end
  old = queue_fields(base)
else
  redis.call('HSET', KEYS[1], 'id', ARGV[2], 'sold', '0', 'held', '0', 'created', s(now),
    'epoch', ARGV[16])
  old = {queued = false, mark = 0}
end
for _, sku in ipairs(old_items) do
  if not keep[sku] then
    redis.call('HDEL', KEYS[1], 'is:' .. sku, 'io:' .. sku, 'ih:' .. sku, 'il:' .. sku)
  end
end
local skus = {}
for _, it in ipairs(new) do
  local sku = it[1]
  skus[#skus + 1] = sku
  redis.call('HSET', KEYS[1], 'is:' .. sku, s(it[2]), 'il:' .. sku, it[3])
  redis.call('HSETNX', KEYS[1], 'io:' .. sku, '0')
  redis.call('HSETNX', KEYS[1], 'ih:' .. sku, '0')
end
if multi then
  redis.call('HSET', KEYS[1], 'items', table.concat(skus, ','))
else
  redis.call('HDEL', KEYS[1], 'items')
end
set_config(KEYS[1], 4, now)
queue_configured(base, now, old)
emit(base, 'configured', now, nil, nil, 0)
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if exists then
  return {'updated', sold, held, epoch}
end
return {'created', 0, 0, epoch}
