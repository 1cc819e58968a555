-- Acknowledgements of jobs that succeeded, many in one call. KEYS: stream, starts, acked.
-- ARGV: group, consumer, record acks (1|0), acked maxlen, status ttl, then entry, deliveries,
-- job id, attempt quadruples. Returns one character per job: 1 (acknowledged now), 0 (not
-- pending here: a consumer that claimed it has it or acknowledged it) or 2 (the entry is gone
-- from the stream: deleted, or lost with a Redis restart without persistence). A job
-- acknowledged now keeps its outcome for `Jobs.status`, as `ended` (helpers.lua) would: built
-- here as text, since this runs for every job.
local s, t, a, g, c = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local now = redis.call('TIME')
local at = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
local outcomes, current = s .. ':outcome:', s .. ':current'
local ids, acked = {}, {}
for i = 6, #ARGV, 4 do
  local id, job = ARGV[i], ARGV[i + 2]
  ids[#ids + 1] = id
  if redis.call('XACK', s, g, id) == 1 then
    if ARGV[3] == '1' then
      redis.call('XADD', a, 'MAXLEN', '~', ARGV[4], '*', 'job', job, 'entry', id,
                 'consumer', c, 'deliveries', ARGV[i + 1])
    end
    redis.call('SET', outcomes .. job, '{"state":"succeeded","attempt":' .. ARGV[i + 3] ..
               ',"at":' .. at .. '}', 'EX', ARGV[5])
    if job ~= id then redis.call('HDEL', current, job) end  -- retried, replayed, scheduled
    acked[#acked + 1] = '1'
  elseif #redis.call('XRANGE', s, id, id) == 0 then
    acked[#acked + 1] = '2'
  else
    acked[#acked + 1] = '0'
  end
end
redis.call('HDEL', t, unpack(ids))
return table.concat(acked)
