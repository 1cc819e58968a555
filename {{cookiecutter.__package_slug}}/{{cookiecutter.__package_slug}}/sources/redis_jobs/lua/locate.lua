-- Where job `job` is, for status.lua and cancel.lua (scripts.py puts this after helpers.lua,
-- whose `ended` says which keys hold a job's status): a table with `state` and what is known
-- with it. A finished job has its outcome until it expires. Any other job is in the stream, at
-- the entry `<s>:current` maps it to (or scheduled, there `due:<ms>`), else at its own id. An
-- entry is running when it is pending in the group `g` and a run of it started (the starts
-- hash `t`); waiting when it is pending and not started (`consumer` fetched it) or not yet
-- delivered.
local function entry_after(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  if tonumber(am) ~= tonumber(bm) then return tonumber(am) > tonumber(bm) end
  return tonumber(as) > tonumber(bs)
end
local function locate(s, t, g, job)
  local outcome = redis.call('GET', s .. ':outcome:' .. job)
  if outcome then return cjson.decode(outcome) end
  local entry = redis.call('HGET', s .. ':current', job)
  if entry and string.sub(entry, 1, 4) == 'due:' then
    return {state = 'scheduled', due = tonumber(string.sub(entry, 5))}
  end
  if not entry then
    if not string.match(job, '^%d+%-%d+$') then return {state = 'unknown'} end
    entry = job
  end
  local e = redis.call('XRANGE', s, entry, entry)[1]
  if not e then return {state = 'unknown'} end
  local m = fieldmap(e[2])
  if (m['job'] or entry) ~= job then return {state = 'unknown'} end  -- another job's entry
  local last
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', s)) do
    local f = fieldmap(group)
    if f['name'] == g then last = f['last-delivered-id'] end
  end
  if last then
    local p = redis.call('XPENDING', s, g, entry, entry, 1)[1]
    if p then
      local started = tonumber(redis.call('HGET', t, entry) or '0') or 0
      if started > 0 then
        return {state = 'running', entry = entry, attempt = started, consumer = p[2]}
      end
      return {state = 'waiting', entry = entry, attempt = attempt_of(m), consumer = p[2]}
    end
    if not entry_after(entry, last) then return {state = 'unknown'} end  -- acknowledged
  end
  return {state = 'waiting', entry = entry, attempt = attempt_of(m)}
end
