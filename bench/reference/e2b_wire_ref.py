"""The same `1 + 1` through E2B's `/execute` and through the native execute route of one
server, with one plain HTTP client (http.client, one kept-alive connection), so that the
difference is the server's alone, not the clients'.

Usage: e2b_wire_ref.py BASE_URL KEY ROUNDS WARMUP. Makes a sandbox through E2B's control
plane, alternates nothing (all E2B rounds, then all native rounds, on the same session),
kills it, and prints one JSON object with both sets of round trips in milliseconds.
"""

import http.client
import json
import sys
import time
from urllib.parse import urlparse


def main() -> None:
    base, key, rounds, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    url = urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port)

    def request(method, path, body, headers):
        conn.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise SystemExit(f"{method} {path}: {resp.status} {data!r}")
        return data

    sandbox = json.loads(request("POST", "/v2/sandboxes", {"templateID": "base"}, {"X-API-KEY": key}))
    sid = sandbox["sandboxID"]
    e2b = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49999", "X-Access-Token": sandbox["envdAccessToken"]}
    native = {"Authorization": f"Bearer {key}"}
    calls = {
        "e2b": lambda: request("POST", "/execute", {"code": "1 + 1", "context_id": None, "language": None}, e2b),
        "native": lambda: request("POST", f"/v1/sessions/{sid}/execute", {"code": "1 + 1"}, native),
    }
    samples = {}
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        taken = []
        for _ in range(rounds):
            start = time.perf_counter()
            out = call()
            taken.append((time.perf_counter() - start) * 1e3)
            if b'"2"' not in out:
                raise SystemExit(f"unexpected output {out!r}")
        samples[name] = taken
    conn.request("DELETE", f"/sandboxes/{sid}", headers={"X-API-KEY": key})
    conn.getresponse().read()
    print(json.dumps({"e2b_ms": samples["e2b"], "native_ms": samples["native"]}))


if __name__ == "__main__":
    main()
