#!lua flags=no-writes
-- lookup.lua: read one reservation; a hold past its deadline reads expired
-- even before any sweep gave its units back.
--
-- KEYS[1] <base>sale   KEYS[2] <base>r:<rid>
-- ARGV[1] base   ARGV[2] rid
--
-- Returns {outcome, user, qty, status, expires_ms, at_ms, 0, '', items},
-- outcome 'ok',
-- 'not_found' or 'not_loaded'.
assert(#KEYS == 2 and #ARGV == 2, 'lookup.lua: wrong arity')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_loaded'}
end
local r = load_rec(ARGV[1], ARGV[2], now_ms())
if not r then
  return {'not_found'}
end
if r[6] then
  r[5] = r[4]
  return rec_reply('ok', r, 'expired')
end
return rec_reply('ok', r)
