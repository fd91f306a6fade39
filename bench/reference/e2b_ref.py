"""E2B's SDK (e2b-code-interpreter) against a server speaking E2B's protocol.

Usage: e2b_ref.py ROUNDS WARMUP, with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set.

Creates a sandbox, runs `1 + 1` WARMUP untimed times and ROUNDS timed times with
`run_code`, kills the sandbox, and prints one JSON object with the round-trip times in
milliseconds.
"""

import json
import sys
import time

from e2b_code_interpreter import Sandbox


def main() -> None:
    rounds, warmup = int(sys.argv[1]), int(sys.argv[2])
    sbx = Sandbox.create()
    try:
        for _ in range(warmup):
            sbx.run_code("1 + 1")
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            execution = sbx.run_code("1 + 1")
            samples.append((time.perf_counter() - start) * 1e3)
            if execution.text != "2":
                raise SystemExit(f"unexpected output {execution.text!r} {execution.error}")
    finally:
        sbx.kill()
    samples.sort()
    print(json.dumps({"p50_ms": samples[len(samples) // 2], "samples_ms": samples}))


if __name__ == "__main__":
    main()
