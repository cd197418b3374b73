#!lua flags=no-writes
-- held.lua: one page of a sale's live holds, by deadline, for the admin's
-- listing. A page starts after the last hold of the page before (its
-- deadline and id: the holds set orders by score, then by member), so it
-- stays put while holds come and go; holds past their deadline are left
-- out. Bounded work per page: a binary search among the holds sharing the
-- cursor's deadline, then one read per hold listed.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds
-- ARGV[1] base   ARGV[2] page size
-- ARGV[3] the cursor's deadline ms ('' for the first page)
-- ARGV[4] the cursor's reservation id ('' for the first page)
--
-- Returns {'not_loaded'} or
--   {'ok', more (1 | 0), last_deadline_ms, last_rid, rid, user, qty,
--    expires_ms, items, rid, user, qty, expires_ms, items, ...}
-- (items: the cart of a sale of several items, '' for none)
-- (last_*: the last hold the page looked at, the next page's cursor when
-- more = 1; '' when it looked at none).
assert(#KEYS == 2 and #ARGV == 4, 'held.lua: wrong arity')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded'}
end
local base, limit = ARGV[1], tonumber(ARGV[2])
local now = now_ms()

-- a <= b, byte by byte (the order of a sorted set's members with one
-- score; Lua's own `<=` follows the server's locale).
local function at_or_before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a <= #b
end

-- Holds due by now are over: start past them.
local start = redis.call('ZCOUNT', KEYS[2], '-inf', s(now))
if ARGV[3] ~= '' then
  -- The holds due at the cursor's deadline sit at [lo, hi), by id.
  local lo = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. ARGV[3])
  local hi = redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[3])
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if at_or_before(redis.call('ZRANGE', KEYS[2], mid, mid)[1], ARGV[4]) then
      lo = mid + 1
    else
      hi = mid
    end
  end
  start = math.max(start, lo)
end
local page = redis.call('ZRANGE', KEYS[2], start, start + limit - 1, 'WITHSCORES')
local seen = #page / 2
local more = start + seen < redis.call('ZCARD', KEYS[2]) and 1 or 0
local out = {'ok', more, page[#page] or '', page[#page - 1] or ''}
for i = 1, #page, 2 do
  local r = redis.call('HMGET', base .. 'r:' .. page[i], 'user', 'qty', 'status', 'items')
  if r[3] == 'held' then
    out[#out + 1] = page[i]
    out[#out + 1] = r[1]
    out[#out + 1] = tonumber(r[2])
    out[#out + 1] = tonumber(page[i + 1])
    out[#out + 1] = r[4] or ''
  end
end
return out
