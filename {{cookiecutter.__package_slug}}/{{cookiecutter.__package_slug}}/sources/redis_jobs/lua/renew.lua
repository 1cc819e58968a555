-- KEYS: stream. ARGV: group, consumer, then entry, deliveries pairs. Resets the idle time of
-- the jobs this consumer still holds; returns those it no longer holds, each followed by 1
-- (claimed by another consumer) or 0 (the entry is gone from the stream).
-- Runs after helpers.lua (scripts.py joins them).
local s, g, c = KEYS[1], ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  if holds(s, g, c, ARGV[i], ARGV[i + 1]) then
    redis.call('XCLAIM', s, g, c, 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
    lost[#lost + 1] = #redis.call('XRANGE', s, ARGV[i], ARGV[i])
  end
end
return lost
