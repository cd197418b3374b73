#!lua
-- queue.lua: a buyer joins a queued sale's fair queue, or reads its ticket
-- (the queue itself is described in lib.lua).
--
-- KEYS[1] <base>sale   KEYS[2] <base>queue
-- ARGV[1] base   ARGV[2] user   ARGV[3] 'join' | 'ticket'
-- ARGV[4] a random place in [0, 1), drawn by the caller: the buyer's place
--         if it joins before the start
--
-- Returns {'not_loaded'}, {'not_queued'}, {'ended', ends_ms},
-- {'not_open', queue_opens_ms}, {'paused'}, {'not_in_queue'} or
--   {'ticket', joined_now (1 | 0), state, position (0 before the start),
--    serving, joined, admitted_until_ms (0 unless admitted), admit_rate,
--    running (1 | 0), now_ms}
-- with state 'pre_queue' (joined before the start), 'waiting', 'admitted'
-- or 'expired' (the window passed without a reserve... or with one: a
-- buyer may reserve as often as the caps allow until then).
assert(#KEYS == 2 and #ARGV == 4, 'queue.lua: wrong arity')
local base, user, join = ARGV[1], ARGV[2], ARGV[3] == 'join'
local c = redis.call('HMGET', KEYS[1], 'id', 'ends', 'queue_opens', 'paused')
if not c[1] then
  return {'not_loaded'}
end
local q = queue_fields(base)
if not q.queued then
  return {'not_queued'}
end
local now = now_ms()
local joined_now = 0
local rank = redis.call('ZRANK', KEYS[2], user)
if not rank then
  if not join then
    return {'not_in_queue'}
  end
  if c[2] ~= '' and now >= tonumber(c[2]) then
    return {'ended', tonumber(c[2])}
  end
  if c[3] ~= '' and now < tonumber(c[3]) then
    return {'not_open', tonumber(c[3])}
  end
  if c[4] == '1' then
    return {'paused'}
  end
  local joined = redis.call('ZCARD', KEYS[2])
  local place = ARGV[4]
  if not q.starts or now >= q.starts then
    -- After the start: first come, first served, behind everyone before.
    place = s(1 + redis.call('HINCRBY', KEYS[1], 'q_seq', 1))
    if admitted(q, now) > joined + 1 then
      -- The queue had run dry: the clock saved no credit for a crowd
      -- arriving now. This buyer is admitted at once, the next ones at
      -- the rate from here.
      queue_anchor(base, q, joined + 1, now, q.run)
    end
  end
  redis.call('ZADD', KEYS[2], place, user)
  bump(base, now)
  rank = redis.call('ZRANK', KEYS[2], user)
  joined_now = 1
end
local joined = redis.call('ZCARD', KEYS[2])
local open = admitted(q, now)
local serving = math.min(open, joined)
local k = rank + 1
local state, position, until_ms = 'waiting', k, 0
if q.starts and now < q.starts then
  state, position = 'pre_queue', 0
elseif k <= open then
  until_ms = admitted_at(q, k) + q.window
  state = now < until_ms and 'admitted' or 'expired'
end
return {'ticket', joined_now, state, position, serving, joined, until_ms, q.rate,
  q.run and 1 or 0, now}
