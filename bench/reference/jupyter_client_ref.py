"""Reference measurement for the LocalBox benchmark: jupyter_client's BlockingKernelClient.

Usage: jupyter_client_ref.py CONFIG_JSON

CONFIG_JSON holds {"flags": [...], "cold_runs": N, "warm_runs": N, "boxes": N,
"per_box": N, "warmup": N}. The kernels are ipykernel started by jupyter_client's
KernelManager from this same Python, with the same flags LocalBox passes. Prints one JSON
object; times in milliseconds.

An execution counts as done when both its execute_reply (shell) and its idle status
(IOPub) have arrived, which is also LocalBox's rule.
"""

import json
import sys
import threading
import time

from jupyter_client.manager import KernelManager


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def start(flags):
    km = KernelManager(kernel_name="python3")
    # Run the kernel with this interpreter, like LocalBox runs it with the box's Python.
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", *flags]
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def run(kc, code):
    msg_id = kc.execute(code, allow_stdin=False)
    reply = idle = False
    while not (reply and idle):
        if not reply:
            while True:
                m = kc.get_shell_msg(timeout=60)
                if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "execute_reply":
                    reply = True
                    break
        m = kc.get_iopub_msg(timeout=60)
        if (
            m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
        ):
            idle = True


def stop(km, kc):
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def summary(samples):
    return {"p50": pct(samples, 0.5), "p90": pct(samples, 0.9), "p99": pct(samples, 0.99), "n": len(samples)}


def main():
    cfg = json.loads(sys.argv[1])
    flags = cfg["flags"]
    out = {"python": sys.executable}

    cold = []
    for _ in range(cfg["cold_runs"]):
        t0 = time.perf_counter()
        km, kc = start(flags)
        run(kc, "1+1")
        cold.append((time.perf_counter() - t0) * 1e3)
        stop(km, kc)
    out["cold_start_ms"] = summary(cold)

    km, kc = start(flags)
    for _ in range(cfg["warmup"]):
        run(kc, "1+1")
    for name, code in [("warm_1plus1_ms", "1+1"), ("warm_print_ms", "print('x')")]:
        samples = []
        for _ in range(cfg["warm_runs"]):
            t0 = time.perf_counter()
            run(kc, code)
            samples.append((time.perf_counter() - t0) * 1e3)
        out[name] = summary(samples)
    stop(km, kc)

    kernels = [start(flags) for _ in range(cfg["boxes"])]
    for _, kc in kernels:
        run(kc, "1+1")
    barrier = threading.Barrier(len(kernels) + 1)

    def worker(kc):
        barrier.wait()
        for _ in range(cfg["per_box"]):
            run(kc, "1+1")

    threads = [threading.Thread(target=worker, args=(kc,)) for _, kc in kernels]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    out["concurrent"] = {
        "boxes": len(kernels),
        "per_box": cfg["per_box"],
        "exec_per_s": len(kernels) * cfg["per_box"] / elapsed,
    }
    for km, kc in kernels:
        stop(km, kc)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
