#!lua
-- steer.lua: an admin pauses, resumes or closes a sale. One atomic step, so
-- a reserve racing it lands before it (and counts) or after it (refused).
--
-- KEYS[1] <base>sale   KEYS[2] <base>events
-- ARGV[1] base   ARGV[2] 'pause' | 'resume' | 'close'
--
-- Returns {'not_loaded'}, {'closed', ends_ms} (a closed sale is neither
-- paused nor resumed: it stays closed) or
--   {'ok', changed (1 | 0), paused (1 | 0), ends_ms or '', closed_ms or ''}
-- with the sale as the call left it. Pausing a paused sale, resuming a
-- running one or closing a closed one changes nothing (changed = 0).
-- Close sets `ends` to now (or keeps an earlier end) and `closed`, and
-- lifts a pause: the sale has ended, for good.
assert(#KEYS == 2 and #ARGV == 2, 'steer.lua: wrong arity')
local base, action = ARGV[1], ARGV[2]
assert(action == 'pause' or action == 'resume' or action == 'close', 'steer.lua: unknown action')
local c = redis.call('HMGET', KEYS[1], 'id', 'paused', 'ends', 'closed')
if not c[1] then
  return {'not_loaded'}
end
local paused, closed = c[2] == '1', (c[4] or '') ~= ''
if closed and action ~= 'close' then
  return {'closed', tonumber(c[3])}
end
local now = now_ms()
local kind = nil
if action == 'pause' and not paused then
  redis.call('HSET', KEYS[1], 'paused', '1')
  kind = 'paused'
elseif action == 'resume' and paused then
  redis.call('HSET', KEYS[1], 'paused', '0')
  kind = 'resumed'
elseif action == 'close' and not closed then
  local ends = tonumber(c[3] or '')
  if not ends or ends > now then
    ends = now
  end
  redis.call('HSET', KEYS[1], 'ends', s(ends), 'closed', s(now), 'paused', '0')
  kind = 'closed'
end
if kind then
  -- A queued sale's admission clock stops while it is paused (queue_pace
  -- reads `paused`) and runs again once it is resumed.
  queue_pace(base, now)
  emit(base, kind, now, nil, nil, 0)
end
local after = redis.call('HMGET', KEYS[1], 'paused', 'ends', 'closed')
return {'ok', kind and 1 or 0, after[1] == '1' and 1 or 0, after[2] or '', after[3] or ''}
