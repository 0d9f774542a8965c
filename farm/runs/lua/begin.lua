-- A worker starts a step (RunStore.begin, RunStore.claim).
-- KEYS[1]  the run's step states (hash, farm:run:<id>:state)
-- KEYS[2]  the run's deliveries (hash, step id -> starts)
-- ARGV[1]  the step id
-- Returns how many times the step has now been started, or -1 when it is neither queued nor running
-- (settled, cancelled or superseded: the worker skips it).
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur ~= 'queued' and cur ~= 'running' then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], 'running')
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
