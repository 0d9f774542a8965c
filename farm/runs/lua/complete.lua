-- A step finished: mark it done, release the dependents it unblocks, settle the run if nothing is left in
-- flight (RunStore.complete). Loaded after finish.lua.
-- KEYS[1]  the run's step states (hash)
-- KEYS[2]  the run's waiting counts (hash, step id -> inputs not done)
-- KEYS[3]  the run's dependents (hash, step id -> JSON list of consumers)
-- KEYS[4]  the run's metadata (hash)
-- KEYS[5]  the run's outbox (set)
-- KEYS[6]  the run's gated steps (set)
-- KEYS[7]  the run's steps (hash, step id -> step JSON)
-- KEYS[8]  the run's remaining paths (hash, step id -> seconds)
-- KEYS[9]  the run's reserved estimates (hash, step id -> micro-dollars)
-- ARGV[1]  the step id
-- ARGV[2]  its final state: 'done' or 'cached'
-- ARGV[3]  now
-- ARGV[4]  what it cost, micro-dollars ('0': nothing)
-- Returns {outcome, released, plans, ranks}: outcome is '' while the run goes on, or its new status when
-- this settled it; released are the dependents now queued (and in the outbox), with their step JSON and
-- remaining seconds. {'-', {}, {}, {}} when the step was not queued or running (a redelivery).
local state, waiting, deps, run, outbox, gated = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local steps, remaining, reserved = KEYS[7], KEYS[8], KEYS[9]
local step, final, now, cost = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('HGET', state, step)
if cur ~= 'running' and cur ~= 'queued' then return {'-', {}, {}, {}} end
redis.call('HSET', state, step, final)
redis.call('HINCRBY', run, 'done', 1)
-- Its estimate leaves the budget's in-flight sum as what it cost joins the spent sum: at the same moment.
redis.call('HDEL', reserved, step)
if cost ~= '0' then redis.call('HINCRBY', run, 'spent_uusd', cost) end
local status = redis.call('HGET', run, 'status')
local released = {}
local list = redis.call('HGET', deps, step)
if list then
  for _, d in ipairs(cjson.decode(list)) do
    local n = redis.call('HINCRBY', waiting, d, -1)
    if n == 0 and status == 'running' and redis.call('HGET', state, d) == 'waiting' then
      if redis.call('SISMEMBER', gated, d) == 1 then
        redis.call('HSET', state, d, 'held')
      else
        redis.call('HSET', state, d, 'queued')
        redis.call('SADD', outbox, d)
        table.insert(released, d)
      end
    end
  end
end
local outcome = ''
if redis.call('HINCRBY', run, 'active', #released - 1) == 0 then outcome = finish(run, now, gated) end
if #released == 0 then return {outcome, {}, {}, {}} end
-- What sending them needs (their plans and ranks), so releasing costs no second round trip.
local plans = redis.call('HMGET', steps, unpack(released))
return {outcome, released, plans, redis.call('HMGET', remaining, unpack(released))}
