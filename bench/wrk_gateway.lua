-- wrk script for the gateway: every request carries its own pre-minted
-- (consent token, DPoP proof) pair, never reused.
--
--   wrk ... -s bench/wrk_gateway.lua URL -- PAIRS_FILE NTHREADS PATH
--
-- PAIRS_FILE has one "<token>\t<proof>" line per request (bench/mint.py).
-- Thread t of n takes lines t, t+n, t+2n, ... so no two threads share a
-- pair. A thread that runs out stops and sends a request that the gateway
-- answers 404 (counted as an error and reported as "pool_exhausted"):
-- a consent is never used twice.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  local file, n, path = args[1], tonumber(args[2]), args[3]
  reqs = {}
  local i = 0
  for line in io.lines(file) do
    if i % n == tid then
      local tab = line:find("\t", 1, true)
      reqs[#reqs + 1] = wrk.format("GET", path, {
        ["Authorization"] = "DPoP " .. line:sub(1, tab - 1),
        ["DPoP"] = line:sub(tab + 1),
      })
    end
    i = i + 1
  end
  nreq = 0
  exhausted = 0
  statuses = {}
  consent_exhausted = 0
  spent = wrk.format("GET", "/__bench_pool_exhausted__")
end

function request()
  nreq = nreq + 1
  local r = reqs[nreq]
  if r == nil then
    exhausted = exhausted + 1
    if exhausted == 1 then wrk.thread:stop() end
    return spent
  end
  reqs[nreq] = nil  -- used once; let it go
  return r
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status == 403 and body and body:find("consent_exhausted", 1, true) then
    consent_exhausted = consent_exhausted + 1
  end
end

function done(summary, latency, requests)
  local merged = {}
  local pool_exhausted, reused = 0, 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses") or {}
    for k, v in pairs(s) do merged[k] = (merged[k] or 0) + v end
    pool_exhausted = pool_exhausted + (t:get("exhausted") or 0)
    reused = reused + (t:get("consent_exhausted") or 0)
  end
  local parts = {}
  for k, v in pairs(merged) do parts[#parts + 1] = string.format('"%s":%d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},' ..
    '"statuses":{%s},"pool_exhausted":%d,"consent_exhausted":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, table.concat(parts, ","), pool_exhausted, reused))
end
