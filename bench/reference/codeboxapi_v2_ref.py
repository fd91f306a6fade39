"""Reference measurement: the codeboxapi 0.2 Python client against its own server.

Usage: codeboxapi_v2_ref.py PORT ROUNDS WARMUP

Connects the package's own client (DockerBox with start_container=False, which speaks the
single-box server's root routes) to `uvicorn codeboxapi.api:app` already listening on
127.0.0.1:PORT, runs the same tiny cell ROUNDS times after WARMUP untimed rounds, and prints
one JSON object with the round-trip times in milliseconds.
"""

import json
import sys
import time

import httpx
from codeboxapi.docker import DockerBox


def main() -> None:
    port, rounds, warmup = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    box = DockerBox(port_or_range=port, start_container=False)
    box.base_url = f"http://127.0.0.1:{port}"
    box.client = httpx.Client(base_url=box.base_url)
    for _ in range(warmup):
        box.exec("1 + 1")
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = box.exec("1 + 1")
        samples.append((time.perf_counter() - start) * 1e3)
        if "2" not in result.text:
            raise SystemExit(f"unexpected output {result.text!r}")
    samples.sort()
    print(json.dumps({"p50_ms": samples[len(samples) // 2], "samples_ms": samples}))


if __name__ == "__main__":
    main()
