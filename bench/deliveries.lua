-- wrk script: POST distinct signed deliveries in rotation, as Cal.com sends them.
-- BODIES (env) is a file of `signature<TAB>body` lines written by `bench-clients gen`.
-- Each thread starts at a different offset so connections do not send the same body together.
local bodies, sigs = {}, {}
local i = 0

function setup(thread)
  thread:set("offset", math.random(0, 1000000))
end

function init(args)
  local path = os.getenv("BODIES")
  for line in io.lines(path) do
    local tab = line:find("\t", 1, true)
    if tab then
      sigs[#sigs + 1] = line:sub(1, tab - 1)
      bodies[#bodies + 1] = line:sub(tab + 1)
    end
  end
  i = (offset or 0) % #bodies
end

function request()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-Cal-Signature-256"] = sigs[i],
    ["X-Cal-Webhook-Version"] = "2021-10-20",
  }, bodies[i])
end
