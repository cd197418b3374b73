#!lua
-- admit.lua: count a new hold against its buyer's cap of simultaneous
-- active holds across all sales (anti-scalping), or refuse it.
-- Runs on the buyer's own key (its own hash tag), right after reserve.lua
-- granted the hold; a refusal makes the caller cancel that hold.
--
-- KEYS[1] <prefix>:{u:<user>}:active   zset: '<sale>|<rid>' -> deadline ms
-- ARGV[1] member   ARGV[2] deadline ms   ARGV[3] cap   ARGV[4] 'add' | 'refresh'
--
-- Returns {'ok'} or {'full', earliest_deadline_ms}.
assert(#KEYS == 1 and #ARGV == 4, 'admit.lua: wrong arity')
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', s(now))
local deadline = tonumber(ARGV[2])
if ARGV[4] == 'refresh' then
  redis.call('ZADD', KEYS[1], 'XX', s(deadline), ARGV[1])
else
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'full', tonumber(first[2])}
  end
  redis.call('ZADD', KEYS[1], s(deadline), ARGV[1])
end
local ttl = deadline - now
if ttl > 0 and redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], s(ttl))
end
return {'ok'}
