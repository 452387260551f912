-- Zipf read/write mix for the cache benchmark (loadtests/bench_cache.py).
--
-- Appended to loadtests/wrk.py's LUA in one script, so its setup/response/done (status counts
-- per thread, the JSON summary between the markers) are reused; init and request are
-- redefined here (a later definition of a global function replaces the earlier one).
--
-- wrk args: learners first_id token seed exponent write_fraction ex_min ex_max perm_seed
-- Each request draws a rank from Zipf(exponent) over 1..learners (a CDF precomputed once per
-- thread, then binary search), maps it to a learner id through one fixed permutation (the
-- same in every thread: hot learners are spread over the id range, not the first ids
-- seeded), and is a POST of one attempt (valid exercise id, current time) with probability
-- write_fraction, else a GET of that learner's weaknesses.

local zipf_n, zipf_cdf, zipf_ids
local write_fraction, ex_min, ex_max
local get_headers, post_headers

function init(args)
  zipf_n = tonumber(args[1])
  local first_id = tonumber(args[2])
  local seed = tonumber(args[4])
  local s = tonumber(args[5])
  write_fraction = tonumber(args[6])
  ex_min, ex_max = tonumber(args[7]), tonumber(args[8])
  local auth = "Bearer " .. args[3]
  -- wrk.format replaces wrk.headers by the table it is given: each carries the key.
  get_headers = { ["Authorization"] = auth }
  post_headers = { ["Authorization"] = auth, ["Content-Type"] = "application/json" }

  zipf_cdf = {}
  local total = 0
  for k = 1, zipf_n do
    total = total + k ^ (-s)
    zipf_cdf[k] = total
  end
  for k = 1, zipf_n do
    zipf_cdf[k] = zipf_cdf[k] / total
  end
  zipf_cdf[zipf_n] = 1.0

  math.randomseed(tonumber(args[9]))
  zipf_ids = {}
  for k = 1, zipf_n do
    zipf_ids[k] = first_id + k - 1
  end
  for k = zipf_n, 2, -1 do -- Fisher-Yates with the shared seed
    local j = math.random(1, k)
    zipf_ids[k], zipf_ids[j] = zipf_ids[j], zipf_ids[k]
  end

  math.randomseed(seed + tid * 7919) -- then each thread its own fixed stream
  statuses = {}
end

local function zipf_rank()
  local u = math.random()
  local lo, hi = 1, zipf_n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if zipf_cdf[mid] < u then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo
end

function request()
  local learner = zipf_ids[zipf_rank()]
  if math.random() < write_fraction then
    local body = string.format(
      '{"attempts":[{"exercise_id":%d,"correct":%s,"answered_at":"%s"}]}',
      math.random(ex_min, ex_max),
      math.random() < 0.6 and "true" or "false",
      os.date("!%Y-%m-%dT%H:%M:%SZ")
    )
    return wrk.format("POST", "/v1/learners/" .. learner .. "/attempts", post_headers, body)
  end
  return wrk.format("GET", "/v1/learners/" .. learner .. "/weaknesses", get_headers)
end
