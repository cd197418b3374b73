#!lua
-- admit.lua: count a new hold against its buyer's cap of simultaneous
-- active holds across all sales (anti-scalping), or refuse it.
-- Runs on the buyer's own key (its own hash tag), right after reserve.lua
-- granted the hold; a refusal makes the caller cancel that hold. Only on
-- Redis Cluster, where the buyer's key and the sale's keys sit in different
-- slots: on one Redis, reserve.lua counts the hold itself (KEYS[7]).
--
-- KEYS[1] <prefix>:{u:<user>}:active   zset: '<sale>|<rid>' -> deadline ms
-- ARGV[1] member   ARGV[2] deadline ms   ARGV[3] cap   ARGV[4] 'add' | 'refresh'
--
-- Returns {'ok'} or {'full', earliest_deadline_ms}. Adding a member that is
-- already counted (a replayed hold, a call run twice) only re-dates it.
assert(#KEYS == 1 and #ARGV == 4, 'admit.lua: wrong arity')
local now = now_ms()
local deadline = tonumber(ARGV[2])
if ARGV[4] == 'refresh' or redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  hold_counted(KEYS[1], ARGV[1], deadline, now, 'XX')
else
  local earliest, n = holds_full(KEYS[1], now, tonumber(ARGV[3]))
  if earliest then
    return {'full', earliest}
  end
  hold_counted(KEYS[1], ARGV[1], deadline, now, nil, n)
end
return {'ok'}
