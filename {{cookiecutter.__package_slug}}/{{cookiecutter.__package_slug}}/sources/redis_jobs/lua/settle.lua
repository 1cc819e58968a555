-- KEYS: stream, dead, starts. ARGV: group, consumer, entry, deliveries, error, max attempts,
-- dead maxlen, status ttl. Puts a job this consumer holds back for its next attempt (or buries
-- it) and acknowledges the old entry. Returns 0 (not held any more: claimed by another
-- consumer), 1 (put back), 2 (buried) or 3 (the entry is gone from the stream).
-- Runs after helpers.lua (scripts.py joins them).
local s, d, t, g, c, id = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3]
local e = redis.call('XRANGE', s, id, id)[1]
if not holds(s, g, c, id, ARGV[4]) then
  if e then return 0 end
  redis.call('HDEL', t, id)
  return 3
end
redis.call('XACK', s, g, id)
if not e then redis.call('HDEL', t, id); return 3 end
return back(s, d, t, ARGV[7], id, fieldmap(e[2]), ARGV[5], c, tonumber(ARGV[6]), ARGV[8])
