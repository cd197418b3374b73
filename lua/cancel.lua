#!lua
-- cancel.lua: give a live hold back before it expires.
--
-- KEYS[1] <base>sale   KEYS[2] <base>holds   KEYS[3] <base>events
-- KEYS[4] <base>r:<rid>   KEYS[5] <base>h:<rid>
-- ARGV[1] base   ARGV[2] rid   ARGV[3] acting user ('' for the admin)
--
-- Returns {outcome, user, qty, status, expires_ms, at_ms, 0, by, items}
-- (items: the cart, every line given back) with outcome
--   'ok'          cancelled now, units given back
--   'replay'      it was already cancelled (same reply, idempotent)
--   'conflict'    it is confirmed or expired (status says which); a hold past
--                 its deadline is expired here and its units given back
--                 (no `by`)
--   'not_found' / 'forbidden' / 'not_loaded'
-- and `by` 'admin' when the admin cancelled it, else 'buyer': an admin
-- cancel is audited in Postgres after this script, and the retry of one
-- whose audit row could not be written must tell it from a buyer's. The
-- `cancelled` event carries `by` too: the write-behind drops a buyer's
-- cancelled record once the event is written, an admin's only once its
-- audit row is there as well.
assert(#KEYS == 5 and #ARGV == 3, 'cancel.lua: wrong arity')
local base, rid = ARGV[1], ARGV[2]
local r, now, early = open_transition(base, rid, ARGV[3])
if early then
  return early
end
local by = ARGV[3] == '' and 'admin' or 'buyer'
if r[3] == 'cancelled' then
  local out = rec_reply('replay', r)
  out[8] = redis.call('HGET', KEYS[4], 'by') or 'buyer'
  return out
end
if r[3] ~= 'held' then
  return rec_reply('conflict', r)
end
local qty, user, items = release_hold(base, rid, 'cancelled', now)
redis.call('HSET', KEYS[4], 'by', by)
emit(base, 'cancelled', now, rid, user, qty, nil, items, by)
queue_pace(base, now)
r[5] = s(now)
local out = rec_reply('ok', r, 'cancelled')
out[8] = by
return out
