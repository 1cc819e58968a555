-- KEYS: stream, starts, scheduled. ARGV: group, job id, status ttl. Cancels a job that no
-- instance holds, in one script (of two callers at once, one cancels it): a scheduled job
-- leaves the sorted set; a waiting one that no consumer was delivered (not in the group's
-- pending list) leaves the stream, so that no XREADGROUP can deliver it. Its outcome is then
-- `cancelled` (`ended`). A pending one is in an instance's memory, about to start: it is left
-- as it is, and runs (put back by an instance that stopped, it is a new entry, cancellable
-- again). Returns {answer, consumer}: cancelled, already (cancelled), fetched or running (with
-- the consumer that holds it), finished or unknown.
-- Runs after helpers.lua and locate.lua (scripts.py joins them).
local s, t, z, g, job = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local where = locate(s, t, g, job)
local state = where['state']
if state == 'cancelled' then return {'already'} end
if state == 'succeeded' or state == 'failed' then return {'finished'} end
if state == 'running' then return {'running', where['consumer']} end
if state == 'unknown' then return {'unknown'} end
if where['consumer'] then return {'fetched', where['consumer']} end  -- pending: not deleted
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
  if not found then return {'unknown'} end  -- moved by a program that left the hash as it was
else
  redis.call('XDEL', s, where['entry'])
end
ended(s, ARGV[3], job, {state = 'cancelled', was = state})
return {'cancelled'}
