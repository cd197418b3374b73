-- lib.lua: helpers shared by every flashgate script.
--
-- Not a script of its own: gate::scripts prepends it to each script's body
-- (right after the script's `#!lua` line), so every script stays one atomic
-- EVALSHA. Key layout of one sale (every key carries the sale's hash tag, so a
-- script touches one Redis Cluster slot):
--   <base>sale        hash    config (id stock limit ttl_ms max_hold_ms starts
--                             ends product created updated), counters (sold
--                             held), the epoch this state was created or
--                             rebuilt in (`epoch`, see migrations/0002), per
--                             buyer `u:<user>` (held) and `b:<user>` (bought)
--   <base>holds       zset    reservation id -> hold deadline (ms, Redis clock)
--   <base>events      stream  one entry per state change, for the worker
--   <base>r:<rid>     hash    reservation record (user qty status created
--                             expires max_until at)
--   <base>h:<rid>     string  the live hold, expiring by PX at its deadline
--   <base>idem:<len(user)>:<user>:<key>  hash  Idempotency-Key -> rid, qty
--                             (the length keeps buyers `a:b` + key `k` and
--                             `a` + key `b:k` apart)
-- where <base> = "<prefix>:{<sale_id>}:" is passed as ARGV[1]. A buyer's
-- active holds across sales (the anti-scalping cap) live under the buyer's
-- own hash tag:
--   <prefix>:{u:<user>}:active  zset  '<sale>|<rid>' -> hold deadline (ms)

-- Integer to string without Lua's float formatting (13-digit ms timestamps).
local function s(n)
  return string.format('%d', n)
end

-- Milliseconds on the Redis clock: one clock for every flashgate instance.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Appends one event to the sale's stream, with the counters after the event
-- and the sale's epoch (an order is recorded only in its epoch):
-- `c` = {id, sold, held, stock, epoch} when the caller knows them, else read here.
local function emit(base, kind, now, rid, user, qty, c)
  c = c or redis.call('HMGET', base .. 'sale', 'id', 'sold', 'held', 'stock', 'epoch')
  redis.call('XADD', base .. 'events', '*',
    'kind', kind, 'sale', c[1], 'rid', rid or '', 'user', user or '',
    'qty', s(qty or 0), 'at', s(now),
    'sold', c[2] or '0', 'held', c[3] or '0', 'stock', c[4] or '0',
    'epoch', c[5] or '0')
end

-- Ends a held reservation as `status` (expired / cancelled) and gives its
-- units back. Returns qty, user when units were released, nil otherwise.
local function release_hold(base, rid, status, now)
  local rkey = base .. 'r:' .. rid
  local r = redis.call('HMGET', rkey, 'status', 'user', 'qty')
  redis.call('ZREM', base .. 'holds', rid)
  if status ~= 'expired' then
    -- An expired hold's key is gone by itself (same deadline). Not naming a
    -- key that may not exist matters on Redis Cluster: while the slot
    -- migrates, a node stops a script at such a key, and this must happen
    -- at the HMGET above (before any write), never between two writes.
    redis.call('DEL', base .. 'h:' .. rid)
  end
  if r[1] ~= 'held' then
    return nil
  end
  local qty = tonumber(r[3])
  local sale = base .. 'sale'
  redis.call('HINCRBY', sale, 'held', -qty)
  if redis.call('HINCRBY', sale, 'u:' .. r[2], -qty) <= 0 then
    redis.call('HDEL', sale, 'u:' .. r[2])
  end
  redis.call('HSET', rkey, 'status', status, 'at', s(now))
  return qty, r[2]
end

-- Gives back the units of at most `limit` holds whose deadline has passed.
local function sweep(base, now, limit)
  local due = redis.call('ZRANGE', base .. 'holds', '-inf', s(now), 'BYSCORE', 'LIMIT', 0, limit)
  local released = 0
  for _, rid in ipairs(due) do
    local qty, user = release_hold(base, rid, 'expired', now)
    if qty then
      released = released + 1
      emit(base, 'expired', now, rid, user, qty)
    end
  end
  return released
end

-- The reply shared by the reservation scripts:
-- {outcome, user, qty, status, expires_ms, at_ms, epoch}
-- (epoch: the sale's, where the caller records an order; else 0)
local function rec_reply(outcome, r, status, epoch)
  return {outcome, r[1] or '', tonumber(r[2] or '0'), status or r[3] or '',
    tonumber(r[4] or '0'), tonumber(r[5] or '0'), tonumber(epoch or '0')}
end

-- Loads a reservation record as {user, qty, status, expires, at}; the status of
-- a hold past its deadline reads `expired` even before a sweep ran.
local function load_rec(base, rid, now)
  local r = redis.call('HMGET', base .. 'r:' .. rid, 'user', 'qty', 'status', 'expires', 'at')
  if not r[3] then
    return nil
  end
  if r[3] == 'held' and tonumber(r[4]) <= now then
    r[6] = 'lapsed'
  end
  return r
end

-- The opening every transition of a held reservation shares (confirm,
-- cancel, extend): the sale must have state here, the reservation must
-- exist and belong to the acting buyer (`actor`, '' for the admin), and a
-- hold past its deadline is expired now (its units given back) and answered
-- as a conflict. Returns r, now to go on with, or nil, nil, the reply to
-- return at once.
local function open_transition(base, rid, actor)
  if redis.call('EXISTS', base .. 'sale') == 0 then
    return nil, nil, {'not_loaded'}
  end
  local now = now_ms()
  local r = load_rec(base, rid, now)
  if not r then
    return nil, nil, {'not_found'}
  end
  if actor ~= '' and r[1] ~= actor then
    return nil, nil, {'forbidden'}
  end
  if r[6] then
    local qty, user = release_hold(base, rid, 'expired', now)
    emit(base, 'expired', now, rid, user, qty)
    r[5] = s(now)
    return nil, nil, rec_reply('conflict', r, 'expired')
  end
  return r, now
end

-- The buyer's active-hold set `key` (see above) has room for one more hold
-- under `cap`: returns nil, n (n: members before the new one, maybe some
-- past their deadline); full: the earliest deadline of its live holds.
-- Holds past their deadline are dropped once the set looks full.
local function holds_full(key, now, cap)
  local n = redis.call('ZCARD', key)
  if n >= cap then
    n = n - redis.call('ZREMRANGEBYSCORE', key, '-inf', s(now))
    if n >= cap then
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      return tonumber(first[2]), n
    end
  end
  return nil, n
end

-- Counts (`flag` nil, `n` members before) or re-dates (`flag` 'XX') `member`
-- in the buyer's active-hold set until `deadline`. The set lives as long as
-- its latest hold: a new set gets that TTL, a set that has one (every set
-- gets one when created) only ever a longer one (GT, Redis 7).
local function hold_counted(key, member, deadline, now, flag, n)
  if flag then
    redis.call('ZADD', key, flag, s(deadline), member)
  else
    redis.call('ZADD', key, s(deadline), member)
  end
  local ttl = deadline - now
  if ttl > 0 then
    if n == 0 then
      redis.call('PEXPIRE', key, s(ttl))
    else
      redis.call('PEXPIRE', key, s(ttl), 'GT')
    end
  end
end
