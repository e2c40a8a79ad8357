-- wrk script of the serving benchmark: POST the seed's single-row payload, or the JSON file WRK_BODY_FILE names
-- (or, with WRK_GET=1, a plain GET of the URL); print one machine-readable line.
if os.getenv("WRK_GET") ~= "1" then
  wrk.method = "POST"
  wrk.body = '{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'
  local file = os.getenv("WRK_BODY_FILE") or ""
  if file ~= "" then
    local f = assert(io.open(file, "rb"))
    wrk.body = f:read("*a")
    f:close()
  end
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
