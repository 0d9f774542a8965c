-- Cancel a run: it stops releasing, its queued, waiting and held steps are cancelled; running ones finish
-- and the last of them settles it (RunStore.cancel). Loaded after finish.lua.
-- KEYS[1]  the run's step states (hash)
-- KEYS[2]  the run's metadata (hash)
-- KEYS[3]  the run's gated steps (set)
-- ARGV[1]  now
-- Returns {outcome, step ids...}: the queued steps to revoke, and outcome '' while steps still run or
-- the run's new status when nothing did. {'-'} when the run was neither running nor in review.
local state, run, gated = KEYS[1], KEYS[2], KEYS[3]
local now = ARGV[1]
local status = redis.call('HGET', run, 'status')
if status ~= 'running' and status ~= 'review' then return {'-'} end
redis.call('HSET', run, 'status', 'cancelling')
local revoked = {}
local all = redis.call('HGETALL', state)
for i = 1, #all, 2 do
  local step, s = all[i], all[i + 1]
  if s == 'queued' then
    redis.call('HSET', state, step, 'cancelled')
    table.insert(revoked, step)
  elseif s == 'waiting' or s == 'held' then
    redis.call('HSET', state, step, 'cancelled')
  end
end
local outcome = ''
if redis.call('HINCRBY', run, 'active', 0 - #revoked) == 0 then outcome = finish(run, now, gated) end
return {outcome, unpack(revoked)}
