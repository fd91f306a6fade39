"""Drive the codebox-api 0.2 `RemoteBox`, unchanged, against a CodeBox server.

Environment: CODEBOX_BASE_URL=http://HOST:PORT/api/v2 and CODEBOX_API_KEY. Exits non-zero
with a message on the first failure; on success prints one JSON line:
{"client": ..., "passed": [...]}.
"""

import asyncio
import base64
import json
import os
import sys
import traceback
from importlib.metadata import version

import httpx
from codeboxapi import CodeBox

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.show()"
BINARY = os.urandom(3 * 1024 * 1024 + 17)
INSTALL = os.environ.get("COMPAT_INSTALL_PACKAGE", "toolz")
STREAM = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.2)"

passed = []


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def ok(name):
    passed.append(name)


def sync_suite():
    cb = CodeBox()
    check(type(cb).__name__ == "RemoteBox", f"expected RemoteBox, got {type(cb)}")

    check(cb.healthcheck() == "healthy", "healthcheck")
    ok("healthcheck")

    r = cb.exec("print('hello')")
    check([(c.type, c.content) for c in r.chunks] == [("txt", "hello\n")], f"exec print: {r.chunks}")
    r = cb.exec("x = 40\nx + 2")
    check(r.text == "42", f"exec value: {r.chunks}")
    r = cb.exec("print('<txt>tags</txt> in output'); print('after')")
    check(r.text == "<txt>tags</txt> in output\nafter\n", f"exec output holding tags: {r.chunks}")
    r = cb.exec("1/0")
    check(len(r.errors) == 1 and "ZeroDivisionError" in r.errors[0], f"exec error: {r.chunks}")
    r = cb.exec(PLOT)
    check(len(r.images) == 1 and base64.b64decode(r.images[0]).startswith(PNG_MAGIC), f"exec image: {r.chunks}")
    ok("exec_ipython")

    r = cb.exec("echo hi; echo oops >&2; pwd", kernel="bash")
    check(r.text.startswith("hi\n") and r.errors == ["oops\n"], f"exec bash: {r.chunks}")
    ok("exec_bash")

    chunks = list(cb.stream_exec(STREAM))
    # One chunk per output as it happens (the kernel may split a print further).
    check(len(chunks) >= 3 and all(c.type == "txt" for c in chunks), f"stream_exec chunks: {chunks}")
    check("".join(c.content for c in chunks) == "0\n1\n2\n", f"stream_exec text: {chunks}")
    chunks = list(cb.stream_exec("for i in 1 2 3; do echo $i; done", kernel="bash"))
    check("".join(c.content for c in chunks if c.type == "txt") == "1\n2\n3\n", f"stream_exec bash: {chunks}")
    ok("stream_exec")

    f = cb.upload("data/notes.txt", "hello file")
    check(f.path == "data/notes.txt", f"upload: {f}")
    cb.upload("blob.bin", BINARY)
    r = cb.exec("print(open('data/notes.txt').read())")
    check(r.text == "hello file\n", f"uploaded file readable by code: {r.chunks}")
    r = cb.exec("import os; print(os.path.basename(os.getcwd()))", cwd="data")
    check(r.text == "data\n", f"exec with cwd: {r.chunks}")
    ok("upload")

    files = {f.path: f for f in cb.list_files()}
    check({"data/notes.txt", "blob.bin"} <= set(files), f"list_files: {sorted(files)}")
    # The client parses `du -h`, so sizes are as rounded as that (3.1M).
    size = files["blob.bin"].get_size()
    check(abs(size - len(BINARY)) < len(BINARY) * 0.1, f"list_files size {size} for {len(BINARY)} bytes")
    ok("list_files")

    check(b"".join(cb.stream_download("blob.bin")) == BINARY, "stream_download is exact")
    ok("stream_download")
    check(cb.download("data/notes.txt").get_content() == b"hello file", "download")
    ok("download")
    try:
        b"".join(cb.stream_download("missing.txt"))
        raise AssertionError("downloading a missing file must fail")
    except httpx.HTTPStatusError as e:
        check(e.response.status_code == 404, f"missing file: {e}")
    ok("download_missing_404")

    msg = cb.install(INSTALL)
    check(msg == f"{INSTALL} installed successfully", f"install: {msg}")
    r = cb.exec(f"import {INSTALL}; print({INSTALL}.__name__)")
    check(r.text == f"{INSTALL}\n", f"installed package imports: {r.chunks}")
    ok("install")

    packages = [p.lower() for p in cb.list_packages()]
    check(INSTALL in packages and "ipykernel" in packages, f"list_packages: {packages}")
    ok("list_packages")

    cb.exec("a = 1\nb = 'two'")
    variables = cb.show_variables()
    check(variables.get("a") == "1" and variables.get("b") == "two", f"show_variables: {variables}")
    ok("show_variables")

    cb.restart()
    r = cb.exec("print(a)")
    check(any("NameError" in e for e in r.errors), f"variables are gone after restart: {r.chunks}")
    check(cb.download("data/notes.txt").get_content() == b"hello file", "files stay after restart")
    ok("restart")

    # The session is the client's id: a second client with the same id sees the same box.
    again = CodeBox(session_id=cb.session_id)
    check(again.exec("print(open('data/notes.txt').read())").text == "hello file\n", "same session id, same box")
    other = CodeBox()
    check(other.session_id != cb.session_id, "fresh ids")
    r = other.exec("import os; print(os.path.exists('data/notes.txt'))")
    check(r.text == "False\n", f"another session is another box: {r.chunks}")
    ok("session_by_client_id")


async def async_suite():
    cb = CodeBox()
    check(await cb.ahealthcheck() == "healthy", "ahealthcheck")
    r = await cb.aexec("print('async')")
    check(r.text == "async\n", f"aexec: {r.chunks}")
    r = await cb.aexec("echo from bash", kernel="bash")
    check(r.text == "from bash\n", f"aexec bash: {r.chunks}")
    chunks = [c async for c in cb.astream_exec(STREAM)]
    check("".join(c.content for c in chunks) == "0\n1\n2\n" and len(chunks) >= 3, f"astream_exec: {chunks}")
    ok("aexec")
    await cb.aupload("async/blob.bin", BINARY)
    content = b""
    async for chunk in cb.astream_download("async/blob.bin"):
        content += chunk
    check(content == BINARY, "astream_download is exact")
    ok("aupload_astream_download")
    files = [f.path for f in await cb.alist_files()]
    check("async/blob.bin" in files, f"alist_files: {files}")
    f = await cb.adownload("async/blob.bin")
    check(await f.aget_content() == BINARY, "adownload")
    ok("alist_files_adownload")
    await cb.aexec("v = 3")
    await cb.arestart()
    r = await cb.aexec("v")
    check(any("NameError" in e for e in r.errors), f"arestart: {r.chunks}")
    ok("arestart")


def wrong_key():
    try:
        CodeBox(api_key=os.environ["CODEBOX_API_KEY"] + "-wrong").exec("print(1)")
        raise AssertionError("an unknown key must be refused")
    except httpx.HTTPStatusError as e:
        check(e.response.status_code == 401, f"unknown key: {e}")
    ok("unknown_key_refused")


def main():
    check(os.environ["CODEBOX_BASE_URL"].endswith("/api/v2"), "CODEBOX_BASE_URL must end with /api/v2")
    check(os.environ["CODEBOX_API_KEY"] not in ("local", "docker"), "CODEBOX_API_KEY must name a server key")
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
