#!lua
-- confirm.lua: turn a live hold into a sale.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- KEYS[4] <base>r:<rid>   KEYS[5] <base>h:<rid>
-- ARGV[1] base   ARGV[2] rid   ARGV[3] acting user ('' for the admin)
-- ARGV[4] reservation record ttl ms (kept this long after the confirm)
--
-- Returns {outcome, user, qty, status, expires_ms, at_ms, epoch, '', items}
-- (items: the cart of a sale of several items, every line sold) with outcome
--   'ok'          confirmed now (at_ms = confirmation time)
--   'replay'      it was already confirmed (same reply, idempotent)
-- (epoch: the sale's, which the order is recorded under; see lib.lua)
--   'conflict'    it is cancelled or expired (status says which); a hold
--                 past its deadline is expired here and its units given back
--   'not_found' / 'forbidden' / 'not_loaded'
assert(#KEYS == 5 and #ARGV == 4, 'confirm.lua: wrong arity')
local base, rid = ARGV[1], ARGV[2]
local r, now, early = open_transition(base, rid, ARGV[3])
if early then
  return early
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if r[3] == 'confirmed' then
  return rec_reply('replay', r, nil, epoch)
end
if r[3] ~= 'held' then
  return rec_reply('conflict', r)
end

local qty, user = tonumber(r[2]), r[1]
redis.call('HINCRBY', KEYS[1], 'held', -qty)
redis.call('HINCRBY', KEYS[1], 'sold', qty)
if redis.call('HINCRBY', KEYS[1], 'u:' .. user, -qty) <= 0 then
  redis.call('HDEL', KEYS[1], 'u:' .. user)
end
redis.call('HINCRBY', KEYS[1], 'b:' .. user, qty)
unhold_lines(KEYS[1], user, lines_of(r.items), true)
redis.call('HSET', KEYS[4], 'status', 'confirmed', 'at', s(now))
redis.call('PEXPIRE', KEYS[4], ARGV[4])
redis.call('ZREM', KEYS[2], rid)
redis.call('DEL', KEYS[5])
emit(base, 'confirmed', now, rid, user, qty, nil, r.items)
r[5] = s(now)
return rec_reply('ok', r, 'confirmed', epoch)
