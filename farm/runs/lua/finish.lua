-- finish(run, now, gated): settle a run whose last queued or running step has just ended. Not a script on
-- its own: every script that can end a run's last step (complete, fail, cancel, approve, extend) is loaded
-- with this file in front of it (farm.runs.scripts.load).
--   run    the run's metadata hash (farm:run:<id>)
--   now    the time recorded as finished_at
--   gated  the run's set of steps held for review
-- Returns the run's new status: 'review' while gated steps remain (unless it is being cancelled), else
-- 'cancelled', 'succeeded' (every step done, none failed) or 'failed', written with finished_at.
local function finish(run, now, gated)
  local status = redis.call('HGET', run, 'status')
  if status ~= 'cancelling' and redis.call('SCARD', gated) > 0 then
    redis.call('HSET', run, 'status', 'review')
    return 'review'
  end
  local outcome
  if status == 'cancelling' then
    outcome = 'cancelled'
  elseif tonumber(redis.call('HGET', run, 'failed')) == 0
      and tonumber(redis.call('HGET', run, 'done')) == tonumber(redis.call('HGET', run, 'total')) then
    outcome = 'succeeded'
  else
    outcome = 'failed'
  end
  redis.call('HSET', run, 'status', outcome, 'finished_at', now)
  return outcome
end
