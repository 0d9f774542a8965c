-- Switch a run to a retake's new plan in one step (RunStore.extend). Steps of the old plan not in the new
-- one are superseded (a queued one is skipped, a running one finishes unheeded) and go to the history;
-- new, failed, cancelled and superseded steps of the new plan start again when their inputs are done;
-- finished ones are reused. Loaded after finish.lua.
-- KEYS[1]  the run's metadata (hash)
-- KEYS[2]  the run's steps (hash)
-- KEYS[3]  the run's plan order (list)
-- KEYS[4]  the run's step states (hash)
-- KEYS[5]  the run's waiting counts (hash)
-- KEYS[6]  the run's dependents (hash)
-- KEYS[7]  the run's gated steps (set)
-- KEYS[8]  the run's outbox (set)
-- KEYS[9]  the run's review decisions (hash)
-- KEYS[10] the run's takes (hash)
-- KEYS[11] the run's history (list)
-- KEYS[12] the run's source documents (hash)
-- ARGV[1]  now
-- ARGV[2]  one JSON document: order (the new plan's step ids), steps (id -> step JSON, for ids the run has
--          not seen), inputs (id -> input ids, for every step that may (re)start), gate (ids to hold for
--          review), shots (shots whose review decision a new take clears), takes (shot -> take),
--          storyboard (JSON text), cut
-- Returns {outcome, step ids...}: the steps queued now (and in the outbox), and outcome '' or the run's
-- new status when this settled it. {'-'} when the run is cancelling or cancelled.
local run, steps, order, state, waiting, deps = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local gated, outbox, review, takes, history, source = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local now = ARGV[1]
local status = redis.call('HGET', run, 'status')
if status == 'cancelling' or status == 'cancelled' then return {'-'} end
local p = cjson.decode(ARGV[2])
local current, gate = {}, {}
for _, id in ipairs(p.order) do current[id] = true end
for _, id in ipairs(p.gate) do gate[id] = true end
local delta = 0
for _, id in ipairs(redis.call('LRANGE', order, 0, -1)) do
  if not current[id] then
    local s = redis.call('HGET', state, id)
    if s == 'queued' or s == 'running' then delta = delta - 1 end
    if s ~= 'done' and s ~= 'cached' then redis.call('HSET', state, id, 'superseded') end
    redis.call('SREM', gated, id)
    redis.call('SREM', outbox, id)
    redis.call('RPUSH', history, id)
  end
end
for id, doc in pairs(p.steps) do redis.call('HSET', steps, id, doc) end
local released = {}
for _, id in ipairs(p.order) do
  local s = redis.call('HGET', state, id)
  if not s or s == 'failed' or s == 'cancelled' or s == 'superseded' then
    local n = 0
    for _, src in ipairs(p.inputs[id]) do
      local ss = redis.call('HGET', state, src)
      if ss ~= 'done' and ss ~= 'cached' then n = n + 1 end
      local list = cjson.decode(redis.call('HGET', deps, src) or '[]')
      local known = false
      for _, d in ipairs(list) do if d == id then known = true end end
      if not known then
        table.insert(list, id)
        redis.call('HSET', deps, src, cjson.encode(list))
      end
    end
    redis.call('HSET', waiting, id, n)
    if gate[id] then redis.call('SADD', gated, id) end
    if n > 0 then
      redis.call('HSET', state, id, 'waiting')
    elseif gate[id] then
      redis.call('HSET', state, id, 'held')
    else
      redis.call('HSET', state, id, 'queued')
      redis.call('SADD', outbox, id)
      table.insert(released, id)
      delta = delta + 1
    end
  end
end
local done, failed = 0, 0
redis.call('DEL', order)
for _, id in ipairs(p.order) do
  redis.call('RPUSH', order, id)
  local s = redis.call('HGET', state, id)
  if s == 'done' or s == 'cached' then done = done + 1 elseif s == 'failed' then failed = failed + 1 end
end
for _, shot in ipairs(p.shots) do redis.call('HDEL', review, tostring(shot)) end
for shot, take in pairs(p.takes) do redis.call('HSET', takes, shot, take) end
redis.call('HSET', source, 'storyboard', p.storyboard)
redis.call('HSET', run, 'total', #p.order, 'done', done, 'failed', failed, 'cut', p.cut, 'status', 'running')
redis.call('HDEL', run, 'finished_at', 'manifest')
local outcome = ''
if redis.call('HINCRBY', run, 'active', delta) == 0 then outcome = finish(run, now, gated) end
return {outcome, unpack(released)}
