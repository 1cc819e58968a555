-- KEYS: stream, starts, scheduled. ARGV: group, job id, status ttl. Cancels a job that has not
-- started, in one script (of two callers at once, one cancels it): a scheduled job leaves the
-- sorted set; a waiting one that no instance fetched leaves the stream; one that an instance
-- fetched is marked in `<stream>:cancelled`, and that instance drops it instead of starting it
-- (the session's `begin`, or the scripts that put back or claim it). Its outcome is then
-- `cancelled` (`ended`). Returns what happened: cancelled, already (cancelled), running,
-- finished or unknown.
-- Runs after helpers.lua and locate.lua (scripts.py joins them).
local s, t, z, g, job = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local where = locate(s, t, g, job)
local state = where['state']
if state == 'cancelled' then return 'already' end
if state == 'succeeded' or state == 'failed' then return 'finished' end
if state == 'running' or state == 'unknown' then return state end
if state == 'scheduled' then
  local found = false
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', z, where['due'], where['due'])) do
    local ok, j = pcall(cjson.decode, member)
    if ok and type(j) == 'table' and j['job'] == job then
      redis.call('ZREM', z, member)
      found = true
      break
    end
  end
  if not found then return 'unknown' end  -- moved by a program that left the hash as it was
elseif where['consumer'] then  -- fetched: its instance drops it
  redis.call('HSET', s .. ':cancelled', where['entry'], job)
else
  redis.call('XDEL', s, where['entry'])
end
ended(s, ARGV[3], job, {state = 'cancelled', was = state})
return 'cancelled'
