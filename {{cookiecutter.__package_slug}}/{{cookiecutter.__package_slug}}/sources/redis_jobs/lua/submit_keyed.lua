-- KEYS: stream, key marker. ARGV: payload, key, ttl, traceparent (optional). Returns {1, id}
-- or {0, existing id}.
local existing = redis.call('GET', KEYS[2])
if existing then return {0, existing} end
local a = {KEYS[1], '*', 'payload', ARGV[1], 'key', ARGV[2]}
if ARGV[4] then a[#a + 1] = 'traceparent'; a[#a + 1] = ARGV[4] end
local id = redis.call('XADD', unpack(a))
redis.call('SET', KEYS[2], id, 'EX', ARGV[3])
return {1, id}
