-- wrk script: every connection sends 16 pipelined `GET /` at a time (HTTP/1.1
-- pipelining), for scripts/http-compare.sh's pipe16-c64 mode. wrk counts each response.
local depth = 16
local batch

init = function(args)
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format(nil, "/")
  end
  batch = table.concat(r)
end

request = function()
  return batch
end
