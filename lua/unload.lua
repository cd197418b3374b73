#!lua
-- unload.lua: take back a rebuild whose epoch Postgres did not commit
-- (see load.lua): the sale's state goes, so the next request rebuilds it
-- again, fail closed, instead of serving a state whose orders Postgres
-- would refuse. A no-op when the state is of another epoch.
--
-- KEYS[1] <base>sale
-- ARGV[1] the epoch load.lua wrote
--
-- Returns {'unloaded'} or {'kept'}.
assert(#KEYS == 1 and #ARGV == 1, 'unload.lua: wrong arity')
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {'unloaded'}
end
return {'kept'}
