-- Put a run's budget-held steps back in their ready sets with their rank, atomically, so no step is ever
-- in neither set (Scheduler.unhold).
-- KEYS     pairs per queue: KEYS[2i-1] its budget-held set, KEYS[2i] its ready set (sorted sets)
-- ARGV[1]  the run's member prefix ("<run id>\t")
-- ARGV[2]  the run's metadata hash, whose pause marks (budget_held_at, budget_need_uusd) are cleared
-- Returns the 1-based numbers of the queue pairs that got a step back.
local prefix, meta = ARGV[1], ARGV[2]
local moved = {}
for i = 1, #KEYS, 2 do
  local held, ready = KEYS[i], KEYS[i + 1]
  local flat = redis.call('ZRANGE', held, 0, -1, 'WITHSCORES')
  local any = false
  for j = 1, #flat, 2 do
    if string.sub(flat[j], 1, #prefix) == prefix then
      redis.call('ZADD', ready, 'NX', flat[j + 1], flat[j])
      redis.call('ZREM', held, flat[j])
      any = true
    end
  end
  if any then table.insert(moved, (i + 1) / 2) end
end
-- Not paused any more: the admission that follows marks the run again if it holds a step again.
redis.call('HDEL', meta, 'budget_held_at', 'budget_need_uusd')
return moved
