-- wrk script: POST one signed Cal.com delivery (body file and signature from the environment).
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Cal-Signature-256"] = os.getenv("SIGNATURE")
wrk.headers["X-Cal-Webhook-Version"] = "2021-10-20"
