-- Recurring jobs: claim the periods that fell due, each once however many instances call this
-- at once. KEYS: stream, schedules hash (<stream>:every). ARGV, per schedule: its name, the
-- payload (JSON text), run-once (1: periods missed get one job; 0: they are skipped), the
-- latest period not on time, n, then the n periods on time, oldest first (Unix seconds).
-- The hash holds, per schedule, the latest period claimed. A schedule not in it yet starts at
-- its latest period, without a job: its first job is its next period's. Otherwise each period
-- later than the one claimed is claimed now: a job for each one on time, with the key
-- 'every:<name>:<period>', and, if the period before them is later than the one claimed
-- (periods were missed), one job keyed with it, or none ('skipped'). Returns JSON: per
-- schedule [period claimed before ('' if none), period claimed now, the missed periods' job
-- id or 'skipped' or '', the ids of the jobs of the periods on time].
local out, i = {}, 1
local function add(name, payload, period)
  return redis.call('XADD', KEYS[1], '*', 'payload', payload, 'key',
                    'every:' .. name .. ':' .. period)
end
while i <= #ARGV do
  local name, payload, runonce, missed = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local n = tonumber(ARGV[i + 4])
  local newest = missed
  if n > 0 then newest = ARGV[i + 4 + n] end
  local before = redis.call('HGET', KEYS[2], name) or ''
  local last = tonumber(before)
  local claimed, outcome, jobs = before, '', {}
  if last == nil or last < tonumber(newest) then
    redis.call('HSET', KEYS[2], name, newest)
    claimed = newest
  end
  if last ~= nil and last < tonumber(newest) then
    if last < tonumber(missed) then
      if runonce == '1' then outcome = add(name, payload, missed) else outcome = 'skipped' end
    end
    for j = 1, n do
      local period = ARGV[i + 4 + j]
      if last < tonumber(period) then jobs[#jobs + 1] = add(name, payload, period) end
    end
  end
  out[#out + 1] = {before, claimed, outcome, jobs}
  i = i + 5 + n
end
return cjson.encode(out)
