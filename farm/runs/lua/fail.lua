-- A step failed: mark it, drop its budget reservation, settle the run if nothing is left in flight
-- (RunStore.fail). Loaded after finish.lua.
-- KEYS[1]  the run's step states (hash)
-- KEYS[2]  the run's metadata (hash)
-- KEYS[3]  the run's gated steps (set)
-- KEYS[4]  the run's reserved estimates (hash)
-- ARGV[1]  the step id
-- ARGV[2]  now
-- Returns the run's new status when this settled it, '' while it goes on, '-' when the step was not
-- queued or running.
local state, run, gated, reserved = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local step, now = ARGV[1], ARGV[2]
local cur = redis.call('HGET', state, step)
if cur ~= 'running' and cur ~= 'queued' then return '-' end
redis.call('HSET', state, step, 'failed')
redis.call('HDEL', reserved, step)
redis.call('HINCRBY', run, 'failed', 1)
if redis.call('HINCRBY', run, 'active', -1) == 0 then return finish(run, now, gated) end
return ''
