-- KEYS: stream, starts. ARGV: group, then entry, attempt, job id triples. Records, per entry,
-- the attempt of the run that starts now, unless it was cancelled after it was fetched: marked
-- in `<stream>:cancelled` (cancel.lua), or its outcome already says so (an instance that
-- stalled while another dropped it). A cancelled one is acknowledged and dropped here. Returns
-- one character per job: s (started) or c (cancelled: its reader must not run).
-- Runs after helpers.lua (scripts.py joins them).
local s, t, g = KEYS[1], KEYS[2], ARGV[1]
local entries, outcomes, marks = {}, {}, {}
for i = 2, #ARGV, 3 do
  entries[#entries + 1] = ARGV[i]
  outcomes[#outcomes + 1] = s .. ':outcome:' .. ARGV[i + 2]
  marks[#marks + 1] = ARGV[i]
  marks[#marks + 1] = ARGV[i + 1]
end
redis.call('HSET', t, unpack(marks))
local marked = redis.call('HMGET', s .. ':cancelled', unpack(entries))
local known = redis.call('MGET', unpack(outcomes))
local out = {}
for k, id in ipairs(entries) do
  if marked[k] or (known[k] and string.find(known[k], '"state":"cancelled"', 1, true)) then
    redis.call('XACK', s, g, id)
    drop(s, t, id)
    out[k] = 'c'
  else
    out[k] = 's'
  end
end
return table.concat(out)
