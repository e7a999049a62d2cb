-- A new key for every request: bench/cold/NNNNN.bin from COLD_START on (wrapping at COLD_KEYS).
local keys = tonumber(os.getenv("COLD_KEYS") or "120000")
local i = tonumber(os.getenv("COLD_START") or "0")
local prefix = os.getenv("COLD_PREFIX") or "/files/bench/cold/"
request = function()
  local path = string.format("%s%05d.bin", prefix, i % keys)
  i = i + 1
  return wrk.format(nil, path)
end
