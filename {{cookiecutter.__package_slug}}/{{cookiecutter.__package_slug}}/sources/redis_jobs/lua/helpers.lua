-- Functions the other scripts share (scripts.py puts them first in each that uses them).
local function fieldmap(f)
  local m = {}
  if f then for i = 1, #f, 2 do m[f[i]] = f[i + 1] end end
  return m
end
local function holds(s, g, c, id, deliveries)
  local p = redis.call('XPENDING', s, g, id, id, 1)[1]
  return p ~= nil and p[2] == c and p[4] == tonumber(deliveries)
end
-- Jobs' status (`Jobs.status`) is kept in keys named after the stream `s`, all under its name
-- (as an ACL pattern `~<stream>*` wants): `<s>:outcome:<job>` holds a finished job's outcome as
-- JSON for the status ttl; the hash `<s>:current` maps a job whose stream entry is not its id
-- (retried, replayed, scheduled) to that entry, or to `due:<ms>` while it is scheduled.
local function ended(s, ttl, job, fields)
  local now = redis.call('TIME')
  fields['at'] = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('SET', s .. ':outcome:' .. job, cjson.encode(fields), 'EX', ttl)
  redis.call('HDEL', s .. ':current', job)
end
local function bury(d, maxlen, id, m, attempts, err, c, s, ttl)
  local a = {d, 'MAXLEN', '~', maxlen, '*', 'job', m['job'] or id, 'payload', m['payload'] or '',
             'attempts', attempts, 'error', err, 'consumer', c}
  if m['key'] then a[#a + 1] = 'key'; a[#a + 1] = m['key'] end
  if m['traceparent'] then a[#a + 1] = 'traceparent'; a[#a + 1] = m['traceparent'] end
  local dead = redis.call('XADD', unpack(a))
  ended(s, ttl, m['job'] or id, {state = 'failed', attempt = attempts, error = err, dead = dead})
end
-- An entry's attempt field as a whole number from 1 (a missing or foreign value counts as 1).
local function attempt_of(m)
  local a = tonumber(m['attempt'])
  if not a or a ~= a or a < 1 or a == math.huge then return 1 end
  return math.floor(a)
end
-- Move the scheduled jobs that are due (by Redis' clock) from the sorted set `z` into the
-- stream `s`; return the ms until the next one is due, or -1 if none is scheduled. A member
-- that is not a scheduled job (another program's) goes to the dead letters `d` as it is.
local function move_due(s, z, d, maxlen)
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', ms, 'LIMIT', 0, 1000)) do
    local ok, j = pcall(cjson.decode, member)
    if ok and type(j) == 'table' and type(j['job']) == 'string'
        and type(j['payload']) == 'string' then
      local a = {s, '*', 'job', j['job'], 'payload', j['payload']}
      if type(j['key']) == 'string' then a[#a + 1] = 'key'; a[#a + 1] = j['key'] end
      if type(j['traceparent']) == 'string' then
        a[#a + 1] = 'traceparent'; a[#a + 1] = j['traceparent']
      end
      redis.call('HSET', s .. ':current', j['job'], redis.call('XADD', unpack(a)))
    else
      redis.call('XADD', d, 'MAXLEN', '~', maxlen, '*', 'job', 'scheduled', 'payload', member,
                 'attempts', 0, 'error', 'not a scheduled job (written by another program?)')
    end
    redis.call('ZREM', z, member)
  end
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if #first == 0 then return -1 end
  return math.max(0, tonumber(first[2]) - ms)
end
-- The attempt the next run of entry `id` (fields `m`) is: the one after the last run of it
-- that started (the starts hash holds that run's attempt), else the entry's own.
local function next_attempt(t, id, m)
  local started = tonumber(redis.call('HGET', t, id) or '0') or 0
  if started > 0 then return started + 1 end
  return attempt_of(m)
end
-- Put entry `id` back for its next attempt (the runs that started count), or bury it (1 or
-- 2). `ttl`: the status ttl. Put back, it is a new entry that no consumer holds: waiting, and
-- cancellable (cancel.lua).
local function back(s, d, t, maxlen, id, m, err, c, maxa, ttl)
  local nexta = next_attempt(t, id, m)
  redis.call('HDEL', t, id)
  if nexta > maxa then
    bury(d, maxlen, id, m, nexta - 1, err, c, s, ttl)
    return 2
  end
  local a = {s, '*', 'job', m['job'] or id, 'payload', m['payload'] or '', 'attempt', nexta}
  if m['key'] then a[#a + 1] = 'key'; a[#a + 1] = m['key'] end
  if m['traceparent'] then a[#a + 1] = 'traceparent'; a[#a + 1] = m['traceparent'] end
  if err ~= '' then a[#a + 1] = 'error'; a[#a + 1] = err end
  redis.call('HSET', s .. ':current', m['job'] or id, redis.call('XADD', unpack(a)))
  return 1
end
