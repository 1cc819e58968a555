-- KEYS: stream, dead, starts. ARGV: group, consumer, count, error, max attempts, dead maxlen,
-- status ttl. Puts back up to `count` jobs this consumer still holds once all its items were
-- settled: fetched and never started (no attempt counted), or lost with their worker (one
-- counted).
-- Returns how many it handled.
-- Runs after helpers.lua (scripts.py joins them).
local s, d, t, g, c = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local held = redis.call('XPENDING', s, g, '-', '+', tonumber(ARGV[3]), c)
for _, p in ipairs(held) do
  local id = p[1]
  local e = redis.call('XRANGE', s, id, id)[1]
  redis.call('XACK', s, g, id)
  if e then
    local err = ''
    if tonumber(redis.call('HGET', t, id) or '0') > 0 then err = ARGV[4] end
    back(s, d, t, ARGV[6], id, fieldmap(e[2]), err, c, tonumber(ARGV[5]), ARGV[7])
  else
    redis.call('HDEL', t, id)
  end
end
return #held
