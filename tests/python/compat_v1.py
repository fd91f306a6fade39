"""Drive the codebox-api 0.1 `CodeBox` class, unchanged, against a CodeBox server.

Environment: CODEBOX_BASE_URL=http://HOST:PORT/api/v1 and CODEBOX_API_KEY. Every client
operation runs in its sync and its async form. Exits non-zero with a message on the first
failure; on success prints one JSON line: {"client": ..., "passed": [...]}.
"""

import asyncio
import base64
import json
import os
import sys
import traceback
from importlib.metadata import version

from codeboxapi import CodeBox, settings
from codeboxapi.errors import CodeBoxError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.show()"
BINARY = bytes(range(256)) * 4096  # 1 MiB, every byte value
INSTALL = os.environ.get("COMPAT_INSTALL_PACKAGE", "tabulate")

passed = []


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def ok(name):
    passed.append(name)


def sync_suite():
    cb = CodeBox()
    check(type(cb).__name__ == "CodeBox", f"expected the remote CodeBox class, got {type(cb)}")

    check(str(cb.start()) == "started", "start")
    check(cb.session_id is not None, "start gives a session id")
    ok("start")

    st = cb.status()
    check(st.status == "running", f"status: {st!r}")
    ok("status")

    out = cb.run("print('hello')")
    check((out.type, out.content) == ("text", "hello\n"), f"run print: {out!r}")
    cb.run("x = 40")
    out = cb.run("x + 2")
    check(out.type == "text" and out.content.strip() == "42", f"run value: {out!r}")
    out = cb.run("1/0")
    check(out.type == "error" and "ZeroDivisionError" in out.content, f"run error: {out!r}")
    out = cb.run("y = 1")
    check(out.content == "code run successfully (no output)", f"run silent: {out!r}")
    ok("run")

    out = cb.run(PLOT)
    check(out.type == "image/png", f"run image: {out.type} {out.content[:80]!r}")
    check(base64.b64decode(out.content).startswith(PNG_MAGIC), "run image is a PNG")
    ok("run_image")

    st = cb.upload("data.csv", b"a,b\n1,2\n")
    check(st.status == "data.csv uploaded successfully", f"upload: {st!r}")
    cb.upload("blob.bin", BINARY)
    out = cb.run("print(open('data.csv').read().splitlines()[1])")
    check(out.content == "1,2\n", f"uploaded file readable by code: {out!r}")
    ok("upload")

    names = [f.name for f in cb.list_files()]
    check({"data.csv", "blob.bin"} <= set(names), f"list_files: {names}")
    ok("list_files")

    f = cb.download("data.csv")
    check((f.name, f.content) == ("data.csv", b"a,b\n1,2\n"), f"download: {f.name} {f.content!r}")
    f = cb.download("blob.bin")
    check(f.content == BINARY, "download of binary content is exact")
    cb.run("open('made-by-code.txt', 'w').write('from the kernel')")
    check(cb.download("made-by-code.txt").content == b"from the kernel", "download a file the code wrote")
    try:
        cb.download("missing.txt")
        raise AssertionError("download of a missing file must fail")
    except CodeBoxError as e:
        check(e.http_status == 404, f"missing file: {e}")
    ok("download")

    st = cb.install(INSTALL)
    check(st.status == f"{INSTALL} installed successfully", f"install: {st!r}")
    out = cb.run(f"import {INSTALL}; print({INSTALL}.__name__)")
    check(out.content == f"{INSTALL}\n", f"installed package imports: {out!r}")
    ok("install")

    check(cb.restart().status == "restarted", "restart")
    out = cb.run("print(x)")
    check(out.type == "error" and "NameError" in out.content, f"variables are gone after restart: {out!r}")
    check(cb.download("data.csv").content == b"a,b\n1,2\n", "files stay after restart")
    ok("restart")

    old = cb.session_id
    check(cb.stop().status == "stopped", "stop")
    check(cb.session_id is None, "stop forgets the session id")
    try:
        CodeBox.from_id(old).status()
        raise AssertionError("a stopped session must be gone")
    except CodeBoxError as e:
        check(e.http_status == 404, f"stopped session: {e}")
    ok("stop")

    # The context manager form starts and stops.
    with CodeBox() as cb2:
        check(cb2.run("print(6 * 7)").content == "42\n", "context manager run")
    check(cb2.session_id is None, "context manager stops")
    ok("context_manager")


async def async_suite():
    cb = CodeBox()
    check(str(await cb.astart()) == "started", "astart")
    ok("astart")
    check((await cb.astatus()).status == "running", "astatus")
    ok("astatus")
    out = await cb.arun("print('hi')")
    check((out.type, out.content) == ("text", "hi\n"), f"arun: {out!r}")
    out = await cb.arun("import math\nmath.floor(2.5) + 40")
    check(out.content.strip() == "42", f"arun value: {out!r}")
    out = await cb.arun("raise ValueError('bad')")
    check(out.type == "error" and out.content == "ValueError: bad", f"arun error: {out!r}")
    out = await cb.arun(PLOT)
    check(out.type == "image/png" and base64.b64decode(out.content).startswith(PNG_MAGIC), "arun image")
    ok("arun")
    st = await cb.aupload("async.bin", BINARY)
    check(st.status == "async.bin uploaded successfully", f"aupload: {st!r}")
    ok("aupload")
    names = [f.name for f in await cb.alist_files()]
    check("async.bin" in names, f"alist_files: {names}")
    ok("alist_files")
    f = await cb.adownload("async.bin")
    check(f.name == "async.bin" and f.content == BINARY, "adownload")
    ok("adownload")
    st = await cb.ainstall(INSTALL)
    check(st.status == f"{INSTALL} installed successfully", f"ainstall: {st!r}")
    ok("ainstall")
    await cb.arun("z = 1")
    check((await cb.arestart()).status == "restarted", "arestart")
    out = await cb.arun("z")
    check(out.type == "error" and "NameError" in out.content, f"arestart clears variables: {out!r}")
    ok("arestart")
    check((await cb.astop()).status == "stopped", "astop")
    ok("astop")


def wrong_key():
    good = settings.CODEBOX_API_KEY
    settings.CODEBOX_API_KEY = good + "-wrong"
    try:
        CodeBox().start()
        raise AssertionError("an unknown key must be refused")
    except CodeBoxError as e:
        check(e.http_status == 401, f"unknown key: {e}")
    finally:
        settings.CODEBOX_API_KEY = good
    ok("unknown_key_refused")


def main():
    check(settings.CODEBOX_BASE_URL.endswith("/api/v1"), f"CODEBOX_BASE_URL={settings.CODEBOX_BASE_URL}")
    check(settings.CODEBOX_API_KEY not in (None, "local"), "CODEBOX_API_KEY must name a server key")
    sync_suite()
    asyncio.run(async_suite())
    wrong_key()
    print(json.dumps({"client": f"codeboxapi {version('codeboxapi')}", "passed": passed}))


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001 - report every failure the same way
        traceback.print_exc()
        print(f"FAILED after {passed}", file=sys.stderr)
        sys.exit(1)
