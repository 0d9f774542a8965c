-- Un-gate steps a reviewer approved: those already held are queued now, the others run when their inputs
-- are done (RunStore.approve). Loaded after finish.lua.
-- KEYS[1]  the run's step states (hash)
-- KEYS[2]  the run's metadata (hash)
-- KEYS[3]  the run's gated steps (set)
-- KEYS[4]  the run's outbox (set)
-- ARGV[1]  now
-- ARGV[2..] the step ids to un-gate
-- Returns {outcome, step ids...}: the steps queued now (and in the outbox), and outcome '' or the run's
-- new status when this settled it. {'-'} when the run was neither running nor in review.
local state, run, gated, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local status = redis.call('HGET', run, 'status')
if status ~= 'running' and status ~= 'review' then return {'-'} end
local released = {}
for i = 2, #ARGV do
  local step = ARGV[i]
  if redis.call('SREM', gated, step) == 1 and redis.call('HGET', state, step) == 'held' then
    redis.call('HSET', state, step, 'queued')
    redis.call('SADD', outbox, step)
    table.insert(released, step)
  end
end
if #released > 0 then redis.call('HSET', run, 'status', 'running') end
local outcome = ''
if redis.call('HINCRBY', run, 'active', #released) == 0 then outcome = finish(run, ARGV[1], gated) end
return {outcome, unpack(released)}
