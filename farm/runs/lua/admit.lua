-- Admit a queue's best-ranked ready steps while its lane has room (Scheduler.settle, Scheduler.admit).
-- KEYS[1]  the queue's ready set (sorted set, "<run id>\t<step id>" -> rank)
-- KEYS[2]  the queue's slots (sorted set, member -> when admitted)
-- KEYS[3]  the queue's budget-held set (sorted set, member -> rank)
-- ARGV[1]  the lane's limit: how many of its steps may hold a slot (-1: no limit)
-- ARGV[2]  now
-- ARGV[3]  the member of a step that just ended, whose slot is given back ('' for none)
-- Which runs it touches is only known here, so it builds their keys from the members, as farm.runs.keys
-- spells them: farm:run:<id> (metadata), :state, :estimate, :reserved and :outbox. A popped step that is no
-- longer queued is dropped; a paid step that does not fit its run's budget goes to the held set and marks
-- the run paused (budget_need_uusd, budget_held_at).
-- Returns {admitted, over}: the members admitted (each holds a slot and is in its run's outbox, a paid
-- one's estimate reserved), and the members held for want of budget.
local ready, slots, held = KEYS[1], KEYS[2], KEYS[3]
local limit, now, ended = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local function split(member)
  local cut = string.find(member, '\t', 1, true)
  return string.sub(member, 1, cut - 1), string.sub(member, cut + 1)
end
local function state_of(member)
  local run, step = split(member)
  return redis.call('HGET', 'farm:run:' .. run .. ':state', step), run, step
end
-- The run's budget: spent + the estimates of its paid steps in flight + this one's must fit. A reservation
-- whose step is no longer queued or running has ended (its cost is in spent, or it never ran): dropped.
local function affordable(run, step, member, score)
  local meta = 'farm:run:' .. run
  local cost = tonumber(redis.call('HGET', meta .. ':estimate', step) or '0')
  if cost <= 0 then return true end
  local reserved = meta .. ':reserved'
  local budget = redis.call('HGET', meta, 'budget_uusd')
  if budget then
    local in_flight = 0
    local flat = redis.call('HGETALL', reserved)
    for i = 1, #flat, 2 do
      if flat[i] ~= step then
        local s = redis.call('HGET', meta .. ':state', flat[i])
        if s == 'queued' or s == 'running' then
          in_flight = in_flight + tonumber(flat[i + 1])
        else
          redis.call('HDEL', reserved, flat[i])
        end
      end
    end
    local need = tonumber(redis.call('HGET', meta, 'spent_uusd') or '0') + in_flight + cost
    if need > tonumber(budget) then
      redis.call('ZADD', held, score, member)
      redis.call('HSET', meta, 'budget_need_uusd', string.format('%d', need), 'budget_held_at', now)
      return false
    end
  end
  redis.call('HSET', reserved, step, string.format('%d', cost))
  return true
end
if ended ~= '' then redis.call('ZREM', slots, ended) end
local used = redis.call('ZCARD', slots)
if limit >= 0 and used >= limit then
  -- Full: take back slots of steps that ended without saying so (their worker died).
  for _, m in ipairs(redis.call('ZRANGE', slots, 0, -1)) do
    local s = state_of(m)
    if s ~= 'queued' and s ~= 'running' then redis.call('ZREM', slots, m) end
  end
  used = redis.call('ZCARD', slots)
end
local admitted, over = {}, {}
while limit < 0 or used < limit do
  local top = redis.call('ZPOPMAX', ready)
  if #top == 0 then break end
  local s, run, step = state_of(top[1])
  if s == 'queued' then
    if affordable(run, step, top[1], top[2]) then
      redis.call('ZADD', slots, now, top[1])
      redis.call('SADD', 'farm:run:' .. run .. ':outbox', step)
      used = used + 1
      table.insert(admitted, top[1])
    else
      table.insert(over, top[1])
    end
  end
end
return {admitted, over}
