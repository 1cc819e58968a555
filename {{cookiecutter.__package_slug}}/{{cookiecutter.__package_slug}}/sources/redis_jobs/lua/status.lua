-- KEYS: stream, starts. ARGV: group, job id. Returns where the job is (`locate`) as JSON: one
-- script, so one consistent view.
-- Runs after helpers.lua and locate.lua (scripts.py joins them).
return cjson.encode(locate(KEYS[1], KEYS[2], ARGV[1], ARGV[2]))
