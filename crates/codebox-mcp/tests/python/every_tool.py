"""The real Python `mcp` client against `codebox mcp` (stdio) or `/mcp` of `codebox serve`
(Streamable HTTP), in one negotiation mode, calling every tool the server lists.

Usage: every_tool.py stdio MODE CODEBOX_BINARY      (a server behind it when CODEBOX_API_KEY is set)
       every_tool.py http MODE URL API_KEY
       every_tool.py isolation MODE URL API_KEY OTHER_API_KEY
Prints `ok: ...` and exits 0 when every check passes; a failed check raises.
"""

import asyncio
import base64
import os
import sys

from mcp import Client
from mcp.client.stdio import StdioServerParameters

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def text_of(result):
    return "".join(getattr(block, "text", "") for block in result.content)


async def check(client, sessions):
    tools = {t.name for t in (await client.list_tools()).tools}
    expected = {
        "execute", "shell_execute", "write_file", "read_file", "list_files", "delete_file",
        "install_packages", "restart", "list_artifacts", "cleanup_artifacts", "get_execution_info",
    }
    if sessions:
        expected |= {"create_session", "list_sessions", "close_session"}
    assert tools == expected, f"tools: {sorted(tools)}"
    called = set()

    async def call(name, args):
        called.add(name)
        return await client.call_tool(name, args)

    r = await call("execute", {"code": "x = 6 * 7\nprint('answer', x)\nx + 1"})
    assert not r.is_error, text_of(r)
    assert r.structured_content["stdout"] == "answer 42\n", r.structured_content
    assert r.structured_content["results"][0]["text/plain"] == "43", r.structured_content
    assert r.structured_content["timed_out"] is False
    r = await call("execute", {"code": "print(x)"})
    assert r.structured_content["stdout"] == "42\n", "state is kept between calls"

    r = await call("execute", {"code": "1 / 0"})
    assert r.is_error
    assert r.structured_content["error"]["name"] == "ZeroDivisionError", r.structured_content
    assert "ZeroDivisionError" in text_of(r)

    # Output over the cap comes back cut, with a note of what was cut.
    r = await call("execute", {"code": "print('y' * 100000)"})
    assert "characters cut of" in text_of(r) and len(text_of(r)) < 30000, len(text_of(r))

    # An image the code displays is MCP image content.
    png = base64.b64encode(PNG_MAGIC + b"\0" * 16).decode()
    code = (
        "from IPython.display import display, Image\n"
        f"import base64\ndisplay(Image(data=base64.b64decode('{png}'), format='png'))"
    )
    r = await call("execute", {"code": code})
    images = [b for b in r.content if b.type == "image"]
    assert images and images[0].mime_type == "image/png", r.content
    assert base64.b64decode(images[0].data).startswith(PNG_MAGIC)

    # Progress notifications carry output as it comes.
    progress = []

    async def on_progress(value, total, message):
        progress.append(message)

    r = await client.call_tool(
        "execute", {"code": "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.2)"},
        progress_callback=on_progress,
    )
    assert not r.is_error and "tick 2" in r.structured_content["stdout"]
    assert any("tick" in (m or "") for m in progress), progress

    # A call with a timeout that runs past it is interrupted and said so.
    r = await call("execute", {"code": "import time\ntime.sleep(30)", "timeout": 1})
    assert r.is_error and r.structured_content["timed_out"] is True, r.structured_content

    r = await call("shell_execute", {"command": "echo from-shell; echo err >&2; exit 3"})
    assert r.is_error and r.structured_content["exit_code"] == 3, r.structured_content
    assert r.structured_content["stdout"] == "from-shell\n"

    r = await call("write_file", {"path": "notes/a.txt", "content": "hello\nworld\n"})
    assert not r.is_error and r.structured_content["size"] == 12, text_of(r)
    r = await call("read_file", {"path": "notes/a.txt"})
    assert r.structured_content["content"] == "hello\nworld\n", r.structured_content
    r = await call("write_file", {"path": "pic.png", "content": png, "encoding": "base64"})
    assert not r.is_error, text_of(r)
    r = await call("read_file", {"path": "pic.png"})
    assert r.content[0].type == "image" and r.content[0].mime_type == "image/png", r.content
    blob = base64.b64encode(b"\x00\x01\x02binary" * 10).decode()
    await call("write_file", {"path": "blob.bin", "content": blob, "encoding": "base64"})
    r = await call("read_file", {"path": "blob.bin"})
    assert r.is_error and "binary" in text_of(r) and "90 bytes" in text_of(r), text_of(r)

    r = await call("list_files", {"path": ".", "recursive": True})
    paths = {e["path"] for e in r.structured_content["entries"]}
    assert {"notes/a.txt", "pic.png", "blob.bin"} <= paths, paths
    r = await call("list_files", {"path": ".", "recursive": True, "max_entries": 1})
    assert r.structured_content["truncated"] is True and len(r.structured_content["entries"]) == 1

    r = await call("list_artifacts", {})
    artifacts = {e["path"] for e in r.structured_content["artifacts"]}
    assert {"notes/a.txt", "pic.png", "blob.bin"} <= artifacts, artifacts
    r = await call("cleanup_artifacts", {"paths": ["blob.bin"]})
    assert r.structured_content["deleted"] == ["blob.bin"], r.structured_content
    r = await call("delete_file", {"path": "pic.png"})
    assert not r.is_error, text_of(r)
    r = await call("read_file", {"path": "pic.png"})
    assert r.is_error

    # pip with nothing to fetch: a package already there (pip itself).
    r = await call("install_packages", {"packages": ["pip"]})
    assert not r.is_error, text_of(r)

    r = await call("get_execution_info", {})
    assert not r.is_error and "capabilities" in r.structured_content, text_of(r)

    r = await call("restart", {})
    assert not r.is_error, text_of(r)
    r = await call("execute", {"code": "print('x' in dir())"})
    assert r.structured_content["stdout"] == "False\n", "a restart forgets the variables"

    # A bad argument is an MCP error naming it (the client raises it as an exception).
    try:
        await client.call_tool("execute", {"code": 5})
    except Exception as e:  # noqa: BLE001: the client's error type differs between modes
        assert "code" in str(e), str(e)
    else:
        raise AssertionError("a wrongly typed argument was accepted")

    if sessions:
        r = await call("create_session", {})
        assert not r.is_error, text_of(r)
        sid = r.structured_content["session_id"]
        r = await client.call_tool("execute", {"code": "print('in', 1 + 1)", "session_id": sid})
        assert r.structured_content["stdout"] == "in 2\n" and r.structured_content["session_id"] == sid
        r = await call("list_sessions", {})
        assert sid in {s["session_id"] for s in r.structured_content["sessions"]}, r.structured_content
        r = await call("close_session", {"session_id": sid})
        assert not r.is_error, text_of(r)
        r = await client.call_tool("execute", {"code": "1", "session_id": sid})
        assert r.is_error, "a closed session is gone"

    missed = tools - called
    assert not missed, f"tools not called: {missed}"
    return len(tools)


def http_client(url, key, mode):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=300)
    return Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=300)


async def isolation(url, key, other_key, mode):
    """A key's sessions are its own: another key neither lists nor uses them."""
    async with http_client(url, key, mode) as a, http_client(url, other_key, mode) as b:
        r = await a.call_tool("create_session", {})
        sid = r.structured_content["session_id"]
        r = await a.call_tool("execute", {"code": "secret = 'a'", "session_id": sid})
        assert not r.is_error, text_of(r)
        r = await b.call_tool("list_sessions", {})
        assert sid not in {s["session_id"] for s in r.structured_content["sessions"]}, r.structured_content
        r = await b.call_tool("execute", {"code": "print(secret)", "session_id": sid})
        assert r.is_error and "not found" in text_of(r), text_of(r)
        r = await b.call_tool("close_session", {"session_id": sid})
        assert r.is_error, text_of(r)
        # Each key's default box is its own too.
        await a.call_tool("execute", {"code": "mine = 'a'"})
        r = await b.call_tool("execute", {"code": "print('mine' in dir())"})
        assert r.structured_content["stdout"] == "False\n", r.structured_content
        r = await a.call_tool("close_session", {"session_id": sid})
        assert not r.is_error, text_of(r)


async def main():
    transport, mode = sys.argv[1], sys.argv[2]
    if transport == "stdio":
        # The client hands a server only a few variables by default; this one needs the
        # CODEBOX_* settings (the box's home, a server's key) as the test gives them.
        server = StdioServerParameters(command=sys.argv[3], args=["mcp"], env=dict(os.environ))
        async with Client(server, mode=mode, read_timeout_seconds=300) as client:
            n = await check(client, sessions=bool(os.environ.get("CODEBOX_API_KEY")))
        print(f"ok: {n} tools")
    elif transport == "http":
        async with http_client(sys.argv[3], sys.argv[4], mode) as client:
            n = await check(client, sessions=True)
        print(f"ok: {n} tools")
    else:
        await isolation(sys.argv[3], sys.argv[4], sys.argv[5], mode)
        print("ok: sessions kept apart")


asyncio.run(main())
