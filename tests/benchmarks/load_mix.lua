-- wrk script of the mixed workload of tests/benchmarks/bench_perf.py: skewed reads and writes on
-- the comments API.
--
--   wrk ... -s tests/benchmarks/load_mix.lua <url> -- <data.lua>
--
-- <data.lua> (written by tests/benchmarks/mixed.py) returns {users = {...},
-- ops = {[thread] = {...}}, paths = {...}}: the requests are sampled there (skewed sites, skewed
-- threads, the write share), so every run replays the same sequence. Each wrk thread replays its
-- own list.
--
-- Reads GET a thread's comment page; writes POST a comment as one of the site's end users.
-- Read-your-writes is on: like a browser keeping the cookie, each (virtual) end user keeps the
-- X-Causal-Token of its last write and sends it on its later requests. wrk's Lua cannot tell
-- connections apart, so the user is read back from the response (the new comment's author),
-- never guessed from the connection.
--
-- done() prints one "LOADMIX ..." line of per-status counts that bench_perf.py parses.

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

local data, ops, n
local i = 0
local tokens = {}          -- user index -> latest causal token of that user
statuses = {}              -- status -> count (global: done() reads it per thread)
cache = {}                 -- X-Cache value -> count
with_token = 0             -- requests that carried a causal token

function init(args)
   data = dofile(args[1])
   ops = data.ops[id]
   n = #ops.user
   i = (id * 7919) % n     -- threads start at different places of their lists
end

function request()
   i = i % n + 1
   local t = ops.thread[i]
   local u = ops.user[i]
   local user = data.users[u]
   local headers = {["X-Api-Key"] = user.key}
   local token = tokens[u]
   if token then
      headers["X-Causal-Token"] = token
      with_token = with_token + 1
   end
   if ops.write[i] == 1 then
      headers["X-User-Token"] = user.token
      headers["Content-Type"] = "application/json"
      return wrk.format("POST", data.paths[t], headers,
                        '{"body": "load test comment ' .. i .. ' of thread ' .. id .. '"}')
   end
   return wrk.format("GET", data.paths[t] .. "?limit=20", headers)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 200 then
      local how = headers["X-Cache"]
      if how then cache[how] = (cache[how] or 0) + 1 end
   elseif status == 201 then
      local token = headers["X-Causal-Token"]
      local u = body:match('"author":%s*"load%-(%d+)"')
      if token and u then tokens[tonumber(u)] = token end
   end
end

local function dump(tbl)
   local parts = {}
   for k, v in pairs(tbl) do table.insert(parts, tostring(k) .. ":" .. tostring(v)) end
   return table.concat(parts, ",")
end

function done(summary, latency, requests)
   local all_statuses, all_cache, tokened = {}, {}, 0
   for _, thread in ipairs(threads) do
      for k, v in pairs(thread:get("statuses")) do all_statuses[k] = (all_statuses[k] or 0) + v end
      for k, v in pairs(thread:get("cache")) do all_cache[k] = (all_cache[k] or 0) + v end
      tokened = tokened + thread:get("with_token")
   end
   io.write("LOADMIX statuses=" .. dump(all_statuses) .. " cache=" .. dump(all_cache)
            .. " with_token=" .. tokened .. "\n")
end
