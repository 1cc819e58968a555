-- KEYS: dead, stream. ARGV: dead-letter entries. Moves each one that still exists back into
-- the stream as a new job (job id, payload and key kept, attempts reset) and deletes it, in one
-- script: replayed once even if two callers replay it at once. The job's status follows it to
-- the new entry (its failed outcome goes). Returns how many it moved.
-- Runs after helpers.lua (scripts.py joins them).
local n = 0
for _, id in ipairs(ARGV) do
  local e = redis.call('XRANGE', KEYS[1], id, id)[1]
  if e then
    local m = fieldmap(e[2])
    local job = m['job'] or id
    local a = {KEYS[2], '*', 'job', job, 'payload', m['payload'] or ''}
    if m['key'] then a[#a + 1] = 'key'; a[#a + 1] = m['key'] end
    if m['traceparent'] then a[#a + 1] = 'traceparent'; a[#a + 1] = m['traceparent'] end
    redis.call('HSET', KEYS[2] .. ':current', job, redis.call('XADD', unpack(a)))
    redis.call('DEL', KEYS[2] .. ':outcome:' .. job)
    redis.call('XDEL', KEYS[1], id)
    n = n + 1
  end
end
return n
