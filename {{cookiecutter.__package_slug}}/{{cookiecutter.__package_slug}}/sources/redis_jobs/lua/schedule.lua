-- KEYS: scheduled, wake, current entries, key marker (only for a keyed job). ARGV: job id,
-- member (JSON), delay ms (or -1), due time ms (when no delay), key ttl. Schedules a job (a
-- delay counts on Redis' clock); returns {1, id}, or {0, existing id} when the key was
-- submitted within its ttl. The hash of current entries holds `due:<ms>` for the job until it
-- moves into the stream (helpers.lua). A job due before every other scheduled one adds an
-- entry to the wake stream, so that an idle worker blocked on the job stream (and the wake
-- stream) wakes up to wait for this job's time.
if KEYS[4] then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {0, existing} end
end
local due = tonumber(ARGV[4])
if tonumber(ARGV[3]) >= 0 then
  local now = redis.call('TIME')
  due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[3])
end
redis.call('ZADD', KEYS[1], due, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], 'due:' .. due)
if redis.call('ZRANGE', KEYS[1], 0, 0)[1] == ARGV[2] then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000, '*', 'due', due)
end
if KEYS[4] then redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[5]) end
return {1, ARGV[1]}
