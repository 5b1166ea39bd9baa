-- wrk script of tests/benchmarks/bench_perf.py: replays a list of requests, counting answers.
--
--   wrk ... -s tests/benchmarks/requests.lua <url> -- <data.lua> [<run number>]
--
-- <data.lua> (written by bench_perf.py) returns
--   {requests = {{method = "GET", path = "/...", headers = {...}, body = "..."}, ...},
--    fresh_cursor = false}
-- Each wrk thread cycles through the list from its own starting place. With fresh_cursor, each
-- request gets a newest-first cursor (`&cursor=`, the API's format: base64url of
-- ["newest", <id>]) past every existing id, unique per request (the run number keeps runs
-- apart, the wrk thread threads, a counter requests): the page is the thread's
-- first page, but under a cache key nobody asked for before, so it is built from the database.
--
-- done() prints one "REQUESTS statuses=<status:count,...> cache=<X-Cache:count,...>" line.

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

local data, n, prepared, run
local i = 0
local sent = 0
statuses = {}   -- status -> count (global: done() reads it per thread)
cache = {}      -- X-Cache value -> count

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

local function b64url(text)
   local out = {}
   for k = 1, #text, 3 do
      local a, b, c = text:byte(k, k + 2)
      local v = a * 65536 + (b or 0) * 256 + (c or 0)
      local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
      for j = 1, chars do
         local shift = 18 - 6 * (j - 1)
         local index = math.floor(v / 2 ^ shift) % 64
         table.insert(out, alphabet:sub(index + 1, index + 1))
      end
   end
   return table.concat(out)
end

function init(args)
   data = dofile(args[1])
   run = tonumber(args[2] or "0")
   n = #data.requests
   i = (id * 7919) % n     -- threads start at different places of the list
   prepared = {}
   if not data.fresh_cursor then
      for k, r in ipairs(data.requests) do
         prepared[k] = wrk.format(r.method, r.path, r.headers, r.body)
      end
   end
end

function request()
   i = i % n + 1
   if not data.fresh_cursor then
      return prepared[i]
   end
   sent = sent + 1
   -- 19 digits from "91": above any id the shards hand out, below 2^63.
   local last = string.format("91%03d%02d%012d", run % 1000, id % 100, sent)
   local r = data.requests[i]
   local sep = r.path:find("?", 1, true) and "&" or "?"
   return wrk.format(r.method, r.path .. sep .. "cursor=" .. b64url('["newest",' .. last .. ']'),
                     r.headers, r.body)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   local how = headers["X-Cache"]
   if how then cache[how] = (cache[how] or 0) + 1 end
end

local function dump(tbl)
   local parts = {}
   for k, v in pairs(tbl) do table.insert(parts, tostring(k) .. ":" .. tostring(v)) end
   return table.concat(parts, ",")
end

function done(summary, latency, requests)
   local all_statuses, all_cache = {}, {}
   for _, thread in ipairs(threads) do
      for k, v in pairs(thread:get("statuses")) do all_statuses[k] = (all_statuses[k] or 0) + v end
      for k, v in pairs(thread:get("cache")) do all_cache[k] = (all_cache[k] or 0) + v end
   end
   io.write("REQUESTS statuses=" .. dump(all_statuses) .. " cache=" .. dump(all_cache) .. "\n")
end
