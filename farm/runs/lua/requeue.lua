-- A running step goes back to queued for a deliberate retry; the start it used is taken back, so it does
-- not look like a worker death (RunStore.requeue).
-- KEYS[1]  the run's step states (hash)
-- KEYS[2]  the run's deliveries (hash)
-- ARGV[1]  the step id
-- Returns 1 when the step was running and is queued now, else 0.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'queued')
redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
return 1
