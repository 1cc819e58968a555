-- Acknowledgements of jobs that succeeded, many in one call. KEYS: stream, starts, acked.
-- ARGV: group, consumer, record acks (1|0), acked maxlen, then entry, deliveries, job id
-- triples. Returns one character per job: 1 (acknowledged now), 0 (not pending here: a
-- consumer that claimed it has it or acknowledged it) or 2 (the entry is gone from the stream:
-- deleted, or lost with a Redis restart without persistence).
local s, t, a, g, c = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local ids, acked = {}, {}
for i = 5, #ARGV, 3 do
  local id = ARGV[i]
  ids[#ids + 1] = id
  if redis.call('XACK', s, g, id) == 1 then
    if ARGV[3] == '1' then
      redis.call('XADD', a, 'MAXLEN', '~', ARGV[4], '*', 'job', ARGV[i + 2], 'entry', id,
                 'consumer', c, 'deliveries', ARGV[i + 1])
    end
    acked[#acked + 1] = '1'
  elseif #redis.call('XRANGE', s, id, id) == 0 then
    acked[#acked + 1] = '2'
  else
    acked[#acked + 1] = '0'
  end
end
redis.call('HDEL', t, unpack(ids))
return table.concat(acked)
