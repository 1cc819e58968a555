-- KEYS: stream, starts, dead, scheduled. ARGV: group, consumer, count, mode
-- (history|claim|new), cursor, min idle ms, max attempts, dead maxlen, dead-letter error,
-- status ttl.
-- First moves the scheduled jobs that are due into the stream (in this one script, so each
-- moves once however many instances fetch). Returns JSON [cursor, jobs, ms until the next
-- scheduled job is due or -1]: one bulk string is parsed much faster than nested replies by
-- redis-py's Python parser. Fetching
-- counts no attempt: starting a job does. Each job comes with the attempt its next run is (the
-- entry's first attempt plus the runs of it that started); a job whose runs that started used
-- every attempt (their workers died) goes to the dead letters here and comes with attempt 0,
-- so that it still ends as a failed item. A pending entry that is gone from the stream (deleted
-- by hand, or lost with a Redis restart: cancel.lua deletes none that is pending) comes back
-- from XREADGROUP without fields: it is acknowledged and skipped.
-- Runs after helpers.lua (scripts.py joins them).
local s, t, d, z, g, c = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2]
local n, mode, cursor = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local maxa, maxlen = tonumber(ARGV[7]), ARGV[8]
local out = {}
local nextdue = move_due(s, z, d, maxlen)
local function deliver(e, deliveries, fresh)
  local id = e[1]
  if not e[2] then redis.call('XACK', s, g, id); redis.call('HDEL', t, id); return end
  local m = fieldmap(e[2])
  local attempt = attempt_of(m)
  if not fresh then attempt = next_attempt(t, id, m) end  -- runs of it may have started
  if attempt > maxa then
    bury(d, maxlen, id, m, attempt - 1, ARGV[9] .. ' (attempt ' .. (attempt - 1) .. ' of ' ..
         maxa .. ')' .. (m['error'] and ('; earlier: ' .. m['error']) or ''), c, s, ARGV[10])
    redis.call('XACK', s, g, id)
    redis.call('HDEL', t, id)
    attempt = 0
  end
  local problem = ''  -- the worker process fails such an entry for good (Python checks UTF-8)
  if not m['payload'] then problem = 'the entry has no payload field' end
  out[#out + 1] = {id, m['job'] or id, m['key'] or '', m['payload'] or '', attempt, deliveries,
                   m['traceparent'] or '', problem}
end
local function count(id)
  local p = redis.call('XPENDING', s, g, id, id, 1)[1]
  return p and p[4] or 0
end
if mode == 'history' then
  local r = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', n, 'STREAMS', s, cursor)
  local entries = r and r[1][2] or {}
  for _, e in ipairs(entries) do
    cursor = e[1]
    deliver(e, count(e[1]))
  end
  if #entries < n then cursor = '' end
  return cjson.encode({cursor, out, nextdue})
end
if mode == 'claim' then
  local r = redis.call('XAUTOCLAIM', s, g, c, ARGV[6], cursor, 'COUNT', n)
  cursor = r[1]
  for _, e in ipairs(r[2]) do deliver(e, count(e[1])) end
  n = n - #r[2]
end
local fresh = -1
if n > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', n, 'STREAMS', s, '>')
  fresh = r and #r[1][2] or 0
  if r then for _, e in ipairs(r[1][2]) do deliver(e, 1, true) end end  -- never delivered
end
-- Trim: every entry older than the oldest pending one was acknowledged. Whole nodes go
-- (~, cheap); when nothing is pending or new, every entry was acknowledged: all go.
local p = redis.call('XPENDING', s, g)
if p[1] > 0 then
  redis.call('XTRIM', s, 'MINID', '~', p[2])
elseif fresh == 0 then
  redis.call('XTRIM', s, 'MAXLEN', 0)
end
return cjson.encode({cursor, out, nextdue})
