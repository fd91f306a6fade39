"""Drive the real E2B code interpreter SDK (e2b-code-interpreter 2.11.5, e2b < 3), unchanged,
against `codebox serve`, sync and async, and print `N passed, N failed`.

Usage: e2b_compat.py full|debug

- full: E2B_API_URL and E2B_SANDBOX_URL point at the server (both the same URL, which may
  carry a path prefix), E2B_API_KEY is one of its keys; the server keeps a state directory
  (pause).
- debug: E2B_DEBUG=true and E2B_SANDBOX_URL; no key, no control plane (the SDK itself skips
  connect, kill, set_timeout and get_metrics; list and pause need the control plane: they are
  left out).

Every operation is run and reported on its own line (`ok NAME` or `FAILED NAME: why`), so one
failure does not hide the rest. The exit status is non-zero when anything failed.
"""

import asyncio
import base64
import os
import sys
import time
import traceback
import uuid

from e2b import CommandExitException, SandboxQuery, SandboxState, TimeoutException
from e2b_code_interpreter import AsyncSandbox, Sandbox

MODE = sys.argv[1] if len(sys.argv) > 1 else "full"
DEBUG = MODE == "debug"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.show()"
HOME = "/home/user"

passed = []
failed = []


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def record(name, fn):
    try:
        fn()
    except Exception as e:  # every failure is reported, and the run goes on
        failed.append(name)
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        print(f"FAILED {name}: {detail}", flush=True)
        if os.environ.get("E2B_COMPAT_TRACEBACKS"):
            traceback.print_exc()
    else:
        passed.append(name)
        print(f"ok {name}", flush=True)


async def arecord(name, coro_fn):
    try:
        await coro_fn()
    except Exception as e:
        failed.append(name)
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        print(f"FAILED {name}: {detail}", flush=True)
        if os.environ.get("E2B_COMPAT_TRACEBACKS"):
            traceback.print_exc()
    else:
        passed.append(name)
        print(f"ok {name}", flush=True)


def check_run(execution, stdout, results, errors, tag):
    check(execution.error is None, f"{tag}: error {execution.error}")
    check("".join(execution.logs.stdout) == "hello\n", f"{tag}: logs {execution.logs}")
    check(stdout == ["hello\n"], f"{tag}: on_stdout {stdout}")
    check(execution.text == "42", f"{tag}: text {execution.text!r} of {execution.results}")
    check(any(r.is_main_result and r.text == "42" for r in results), f"{tag}: on_result {results}")
    check(not errors, f"{tag}: on_error {errors}")
    check(execution.execution_count is not None, f"{tag}: no execution count")


def check_plot(execution, results, tag):
    pngs = [r.png for r in execution.results if r.png]
    check(len(pngs) == 1, f"{tag}: images {execution.results}")
    check(base64.b64decode(pngs[0]).startswith(PNG_MAGIC), f"{tag}: not a PNG")
    check(any(r.png for r in results), f"{tag}: on_result saw no image")


def check_error(execution, errors, tag):
    check(execution.error is not None, f"{tag}: no error")
    check(execution.error.name == "ZeroDivisionError", f"{tag}: {execution.error}")
    check("division by zero" in execution.error.value, f"{tag}: {execution.error.value}")
    check(isinstance(execution.error.traceback, str) and execution.error.traceback, f"{tag}: traceback")
    check(len(errors) == 1, f"{tag}: on_error {errors}")


def sync_suite(tag):
    state = {}
    metadata = {"suite": f"sync-{MODE}", "run": uuid.uuid4().hex}

    def create():
        sbx = Sandbox.create(metadata=metadata, envs={"E2B_COMPAT": "sandbox-env"}, timeout=300)
        state["sbx"] = sbx
        check(sbx.sandbox_id, "no sandbox id")

    record(f"{tag}create", create)
    sbx = state.get("sbx")
    if sbx is None:
        return

    def run_code():
        stdout, results, errors = [], [], []
        execution = sbx.run_code(
            "print('hello')\n40 + 2",
            on_stdout=lambda m: stdout.append(m.line),
            on_result=results.append,
            on_error=errors.append,
        )
        check_run(execution, stdout, results, errors, "run_code")

    def run_code_image():
        results = []
        check_plot(sbx.run_code(PLOT, on_result=results.append), results, "image")

    def run_code_error():
        errors = []
        check_error(sbx.run_code("1 / 0", on_error=errors.append), errors, "error")

    def run_code_env():
        execution = sbx.run_code("import os\nos.environ.get('PER_RUN')", envs={"PER_RUN": "yes"})
        check(execution.text == "yes", f"envs: {execution.results} {execution.error}")
        after = sbx.run_code("import os\nprint(os.environ.get('PER_RUN'))")
        check("".join(after.logs.stdout) == "None\n", f"envs left behind: {after.logs}")
        if not DEBUG:
            env = sbx.run_code("import os\nos.environ.get('E2B_COMPAT')")
            check(env.text == "sandbox-env", f"sandbox envs: {env.results} {env.error}")

    def run_code_bash():
        execution = sbx.run_code("echo from-bash", language="bash")
        check("".join(execution.logs.stdout) == "from-bash\n", f"bash: {execution.logs} {execution.error}")

    def run_code_timeout():
        # The client gives up after 2 s and closes its connection: the server interrupts the
        # code, so the marker is never written (the next execution would wait for it).
        marker = f"not-interrupted-{uuid.uuid4().hex[:6]}"
        slow = f"import time\ntime.sleep(20)\nopen('{marker}', 'w').write('x')"
        try:
            sbx.run_code(slow, timeout=2)
        except TimeoutException:
            pass
        else:
            raise AssertionError("run_code past its timeout did not raise")
        after = sbx.run_code(f"import os\nos.path.exists('{marker}')")
        check(after.text == "False", f"the code ran on after the client went: {after.text} {after.error}")

    def contexts():
        context = sbx.create_code_context(cwd=HOME)
        check(context.language == "python", f"context {context}")
        sbx.run_code("x = 7", context=context)
        check(sbx.run_code("x", context=context).text == "7", "context kept its variable")
        check(any(c.id == context.id for c in sbx.list_code_contexts()), "context listed")
        sbx.restart_code_context(context)
        restarted = sbx.run_code("x", context=context)
        check(restarted.error is not None and restarted.error.name == "NameError", f"restart: {restarted.error}")
        sbx.remove_code_context(context)
        check(all(c.id != context.id for c in sbx.list_code_contexts()), "context removed")

    for name, fn in [
        ("run_code", run_code),
        ("run_code_image", run_code_image),
        ("run_code_error", run_code_error),
        ("run_code_envs", run_code_env),
        ("run_code_bash", run_code_bash),
        ("run_code_timeout", run_code_timeout),
        ("contexts", contexts),
    ]:
        record(f"{tag}{name}", fn)

    d = f"{HOME}/compat-{tag.strip(':') or 'x'}-{uuid.uuid4().hex[:6]}"

    def files():
        check(sbx.files.make_dir(d), "make_dir")
        check(not sbx.files.make_dir(d), "make_dir of an existing directory is False")
        sbx.files.write(f"{d}/a.txt", "alpha")
        check(sbx.files.read(f"{d}/a.txt") == "alpha", "read text")
        blob = os.urandom(70_000)
        sbx.files.write(f"{d}/b.bin", blob)
        check(bytes(sbx.files.read(f"{d}/b.bin", format="bytes")) == blob, "read bytes")
        names = sorted(e.name for e in sbx.files.list(d))
        check(names == ["a.txt", "b.bin"], f"list {names}")
        check(sbx.files.exists(f"{d}/a.txt"), "exists")
        sbx.files.rename(f"{d}/a.txt", f"{d}/c.txt")
        check(not sbx.files.exists(f"{d}/a.txt") and sbx.files.exists(f"{d}/c.txt"), "rename")
        sbx.files.remove(f"{d}/c.txt")
        check(not sbx.files.exists(f"{d}/c.txt"), "remove")
        # /home/user is the kernel's working directory.
        relative = d[len(HOME) + 1 :]
        seen = sbx.run_code(f"len(open('{relative}/b.bin', 'rb').read())")
        check(seen.text == str(len(blob)), f"the kernel sees the files: {seen.text} {seen.error}")

    def commands():
        result = sbx.commands.run("echo out; echo err >&2")
        check(result.stdout == "out\n" and result.stderr == "err\n", f"run: {result}")
        check(result.exit_code == 0, f"exit {result.exit_code}")
        try:
            sbx.commands.run("exit 3")
        except CommandExitException as e:
            check(e.exit_code == 3, f"exit code {e.exit_code}")
        else:
            raise AssertionError("a non-zero exit did not raise")
        handle = sbx.commands.run("sleep 600", background=True)
        check(any(p.pid == handle.pid for p in sbx.commands.list()), "background process listed")
        check(handle.kill(), "kill")
        for _ in range(100):
            if all(p.pid != handle.pid for p in sbx.commands.list()):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the killed process is still listed")

    record(f"{tag}files", files)
    record(f"{tag}commands", commands)

    def set_timeout():
        sbx.set_timeout(120)
        if not DEBUG:
            info = sbx.get_info()
            check(info.sandbox_id == sbx.sandbox_id, f"get_info {info}")
            check(info.metadata == metadata, f"metadata {info.metadata}")

    def get_metrics():
        metrics = sbx.get_metrics()
        check(isinstance(metrics, list), f"metrics {metrics}")
        if not DEBUG:
            check(len(metrics) >= 1 and metrics[0].mem_used >= 0, f"metrics {metrics}")

    record(f"{tag}set_timeout", set_timeout)
    record(f"{tag}get_metrics", get_metrics)

    if not DEBUG:

        def pause_connect():
            sbx.run_code("kept_across_pause = 41")
            check(sbx.pause(), "pause")
            check(Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED, "state paused")
            check(not sbx.pause(), "pausing a paused sandbox is False")
            resumed = Sandbox.connect(sbx.sandbox_id)
            check(resumed.run_code("kept_across_pause + 1").text == "42", "variables kept across the pause")
            check(sbx.get_info().state == SandboxState.RUNNING, "state running")

        def listing():
            query = SandboxQuery(metadata=metadata, state=[SandboxState.RUNNING])
            items = Sandbox.list(query=query).next_items()
            check([s.sandbox_id for s in items] == [sbx.sandbox_id], f"list {items}")

        def kill():
            check(sbx.kill(), "kill")
            check(not Sandbox.kill(sbx.sandbox_id), "a second kill finds nothing")

        record(f"{tag}pause_connect", pause_connect)
        record(f"{tag}list", listing)
        record(f"{tag}kill", kill)


async def async_suite(tag):
    state = {}
    metadata = {"suite": f"async-{MODE}", "run": uuid.uuid4().hex}

    async def create():
        state["sbx"] = await AsyncSandbox.create(metadata=metadata, timeout=300)

    await arecord(f"{tag}create", create)
    sbx = state.get("sbx")
    if sbx is None:
        return

    async def run_code():
        stdout, results, errors = [], [], []
        execution = await sbx.run_code(
            "print('hello')\n40 + 2",
            on_stdout=lambda m: stdout.append(m.line),
            on_result=results.append,
            on_error=errors.append,
        )
        check_run(execution, stdout, results, errors, "async run_code")

    async def run_code_image():
        results = []
        check_plot(await sbx.run_code(PLOT, on_result=results.append), results, "async image")

    async def run_code_error():
        errors = []
        check_error(await sbx.run_code("1 / 0", on_error=errors.append), errors, "async error")

    async def contexts():
        context = await sbx.create_code_context()
        await sbx.run_code("y = 5", context=context)
        check((await sbx.run_code("y", context=context)).text == "5", "context kept its variable")
        check(any(c.id == context.id for c in await sbx.list_code_contexts()), "context listed")
        await sbx.restart_code_context(context)
        await sbx.remove_code_context(context)
        check(all(c.id != context.id for c in await sbx.list_code_contexts()), "context removed")

    d = f"{HOME}/compat-async-{uuid.uuid4().hex[:6]}"

    async def files():
        check(await sbx.files.make_dir(d), "make_dir")
        await sbx.files.write(f"{d}/a.txt", "alpha")
        check(await sbx.files.read(f"{d}/a.txt") == "alpha", "read")
        check([e.name for e in await sbx.files.list(d)] == ["a.txt"], "list")
        check(await sbx.files.exists(f"{d}/a.txt"), "exists")
        await sbx.files.rename(f"{d}/a.txt", f"{d}/b.txt")
        check(await sbx.files.exists(f"{d}/b.txt"), "rename")
        await sbx.files.remove(f"{d}/b.txt")
        check(not await sbx.files.exists(f"{d}/b.txt"), "remove")

    async def commands():
        result = await sbx.commands.run("echo out")
        check(result.stdout == "out\n", f"run: {result}")
        try:
            await sbx.commands.run("exit 4")
        except CommandExitException as e:
            check(e.exit_code == 4, f"exit code {e.exit_code}")
        else:
            raise AssertionError("a non-zero exit did not raise")
        handle = await sbx.commands.run("sleep 600", background=True)
        check(await handle.kill(), "kill")

    async def set_timeout():
        await sbx.set_timeout(120)

    async def get_metrics():
        check(isinstance(await sbx.get_metrics(), list), "metrics")

    for name, fn in [
        ("run_code", run_code),
        ("run_code_image", run_code_image),
        ("run_code_error", run_code_error),
        ("contexts", contexts),
        ("files", files),
        ("commands", commands),
        ("set_timeout", set_timeout),
        ("get_metrics", get_metrics),
    ]:
        await arecord(f"{tag}{name}", fn)

    if not DEBUG:

        async def listing():
            items = await AsyncSandbox.list(query=SandboxQuery(metadata=metadata)).next_items()
            check([s.sandbox_id for s in items] == [sbx.sandbox_id], f"list {items}")

        async def kill():
            check(await sbx.kill(), "kill")

        await arecord(f"{tag}list", listing)
        await arecord(f"{tag}kill", kill)


def main():
    if DEBUG:
        check(os.environ.get("E2B_DEBUG") == "true", "debug mode needs E2B_DEBUG=true")
    sync_suite("sync:")
    asyncio.run(async_suite("async:"))
    print(f"{len(passed)} passed, {len(failed)} failed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
