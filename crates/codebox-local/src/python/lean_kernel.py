# codebox's lean Python kernel: IPython's shell behind the Jupyter messaging protocol,
# without ipykernel's machinery.
#
# ipykernel routes every request through tornado, an asyncio loop and three threads
# before user code runs; for a one-line cell that is most of the round trip. This kernel
# reads the shell socket in the main thread and runs the cell at once; only the control
# channel (interrupt, shutdown), the heartbeat and the periodic output flush have threads.
# What it leaves out: comms and widgets, the debugger, completion and inspection, the
# execute_input broadcast, capture of what C code writes to descriptor 2, and input(),
# which raises as it does under ipykernel when the client allows no stdin.
#
# Run as `python -c <this file> -f CONNECTION_FILE`.
import gc
import sys

gc.disable()

import builtins
import codecs
import datetime
import fcntl
import hashlib
import hmac
import io
import itertools
import json
import os
import signal
import termios
import threading
import time
import uuid

import zmq
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import StdinNotImplementedError
from IPython.core.interactiveshell import InteractiveShell
from traitlets import Type
from traitlets.config import Config

PROTOCOL_VERSION = "5.3"
DELIM = b"<IDS|MSG>"
# A stream message is sent once this much text is waiting, or FLUSH_INTERVAL after the
# first unsent write, whichever comes first.
FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL = 0.05


def _json_default(obj):
    if isinstance(obj, (datetime.datetime, datetime.date)):
        return obj.isoformat()
    if isinstance(obj, bytes):
        import base64

        return base64.b64encode(obj).decode("ascii")
    return repr(obj)


def _finite(obj):
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj):
    try:
        text = json.dumps(obj, default=_json_default, ensure_ascii=False, allow_nan=False)
    except ValueError:
        # NaN and infinities are not JSON; send them as null rather than drop the message.
        text = json.dumps(_finite(obj), default=_json_default, ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", "replace")


class Session:
    """Signs, sends and parses Jupyter messages. One lock serializes every send on IOPub,
    which the main thread, the flusher and the control thread all use.

    A parent header is passed on as the bytes it arrived in, and headers are formatted
    directly: a one-line cell costs five messages, and building each through dicts and
    json.dumps took longer than the cell itself."""

    def __init__(self, key, scheme):
        self.key = key.encode()
        self.digest = getattr(hashlib, scheme.split("-", 1)[1]) if key else None
        self.session = uuid.uuid4().hex
        self.counter = itertools.count(1)
        self.iopub_lock = threading.Lock()

    def sign(self, parts):
        if not self.digest:
            return b""
        h = hmac.new(self.key, digestmod=self.digest)
        for p in parts:
            h.update(p)
        return h.hexdigest().encode()

    def header(self, msg_type):
        # msg_type is always one of this file's own constants: nothing to escape.
        return (
            '{"msg_id":"%s_%d","session":"%s","username":"codebox","date":"%s","msg_type":"%s","version":"%s"}'
            % (
                self.session,
                next(self.counter),
                self.session,
                datetime.datetime.now(datetime.timezone.utc).isoformat(),
                msg_type,
                PROTOCOL_VERSION,
            )
        ).encode()

    def send(self, socket, msg_type, content, parent, idents=(b"",)):
        """Send `content`; `parent` is the raw header of the message this answers."""
        parts = [self.header(msg_type), parent, b"{}", _dumps(content)]
        socket.send_multipart([*idents, DELIM, self.sign(parts), *parts])

    def publish(self, socket, msg_type, content, parent):
        with self.iopub_lock:
            self.send(socket, msg_type, content, parent, idents=(b"kernel." + msg_type.encode(),))

    def recv(self, socket):
        """The next valid message as (identities, raw header, message); None for a message
        with a bad signature, which is dropped."""
        frames = socket.recv_multipart()
        try:
            i = frames.index(DELIM)
        except ValueError:
            return None
        idents, sig, parts = frames[:i], frames[i + 1], frames[i + 2 : i + 6]
        if len(parts) < 4 or not hmac.compare_digest(sig, self.sign(parts)):
            return None
        header, parent, metadata, content = (json.loads(p) for p in parts)
        return idents, parts[0], {"header": header, "parent_header": parent, "metadata": metadata, "content": content}


class OutStream(io.TextIOBase):
    """sys.stdout and sys.stderr: text becomes `stream` messages, batched by size and time."""

    def __init__(self, kernel, name, fd):
        super().__init__()
        self.kernel = kernel
        self.name = name
        self.fd = fd
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.parts = []
        self.size = 0

    encoding = "utf-8"
    errors = "replace"

    def isatty(self):
        return False

    def fileno(self):
        # Descriptor 1 feeds the cell's stdout (see FdCapture), so handing it to a
        # subprocess keeps that output in the cell.
        return self.fd

    def writable(self):
        return True

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if os.getpid() != self.pid:
            # A forked child must not touch the parent's sockets: write to the descriptor,
            # whose output the parent captures.
            os.write(self.fd, text.encode("utf-8", "replace"))
            return len(text)
        if text:
            with self.lock:
                first = not self.parts
                self.parts.append(text)
                self.size += len(text)
                big = self.size >= FLUSH_BYTES
            if big:
                self.flush()
            elif first:
                self.kernel.flusher.wake()
        return len(text)

    def flush(self):
        with self.lock:
            if not self.parts:
                return
            text = "".join(self.parts)
            self.parts, self.size = [], 0
        self.kernel.publish("stream", {"name": self.name, "text": text})


class Flusher(threading.Thread):
    """Sends waiting output FLUSH_INTERVAL after it was written, so a cell that prints and
    then works for a while streams its output as it goes."""

    def __init__(self, kernel):
        super().__init__(name="codebox-flush", daemon=True)
        self.kernel = kernel
        self.pending = threading.Event()

    def wake(self):
        self.pending.set()

    def run(self):
        while True:
            self.pending.wait()
            time.sleep(FLUSH_INTERVAL)
            self.pending.clear()
            self.kernel.flush_streams()


class FdCapture:
    """Output written to file descriptor 1 (`os.system`, subprocesses, C libraries) goes to
    the cell's stdout, as under ipykernel. A pipe replaces the descriptor and a thread
    copies what arrives into the stream. Descriptor 2 is left alone: it is where the
    interpreter reports its own fatal errors, which the supervisor keeps."""

    def __init__(self, fd, stream):
        self.stream = stream
        self.read_fd, write_fd = os.pipe()
        os.dup2(write_fd, fd)
        os.close(write_fd)
        self.busy = threading.Lock()
        threading.Thread(target=self.pump, name=f"codebox-fd{fd}", daemon=True).start()

    def pump(self):
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            data = os.read(self.read_fd, 65536)
            if not data:
                return
            with self.busy:
                self.stream.write(decoder.decode(data))

    def drain(self):
        """Wait (briefly) until what the cell wrote to the descriptor reached the stream."""
        deadline = time.monotonic() + 0.2
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.0005)
        with self.busy:
            pass

    def pending(self):
        buf = bytearray(4)
        fcntl.ioctl(self.read_fd, termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder) > 0


class LeanDisplayHook(DisplayHook):
    """The value of a cell's last expression becomes an `execute_result`."""

    def start_displayhook(self):
        self.msg = {"data": {}, "metadata": {}}

    def write_output_prompt(self):
        self.msg["execution_count"] = self.prompt_count

    def write_format_data(self, format_dict, md_dict=None):
        self.msg["data"] = format_dict
        self.msg["metadata"] = md_dict or {}

    def finish_displayhook(self):
        kernel = self.shell.codebox_kernel
        kernel.flush_streams()
        if self.msg["data"]:
            kernel.publish("execute_result", self.msg)
        self.msg = None


class LeanDisplayPublisher(DisplayPublisher):
    """display(), plots and clear_output() become IOPub messages."""

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
        kernel = self.shell.codebox_kernel
        kernel.flush_streams()
        content = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
        kernel.publish("update_display_data" if update else "display_data", content)

    def clear_output(self, wait=False):
        kernel = self.shell.codebox_kernel
        kernel.flush_streams()
        kernel.publish("clear_output", {"wait": wait})


class LeanShell(InteractiveShell):
    displayhook_class = Type(LeanDisplayHook)
    display_pub_class = Type(LeanDisplayPublisher)
    codebox_kernel = None

    def _showtraceback(self, etype, evalue, stb):
        kernel = self.codebox_kernel
        kernel.flush_streams()
        kernel.last_traceback = stb
        kernel.publish("error", {"ename": etype.__name__, "evalue": str(evalue), "traceback": stb})

    def init_io(self):
        pass  # sys.stdout and sys.stderr are ours.

    def enable_gui(self, gui=None):
        pass


def _sent_before(interrupt_date, running_date):
    """Whether an interrupt was sent before the running request, by their header dates,
    compared only when both are UTC timestamps of one fixed format (codebox's)."""
    same_format = len(interrupt_date) == len(running_date) and interrupt_date.endswith("Z") and running_date.endswith("Z")
    return same_format and interrupt_date < running_date


def _no_stdin(*args, **kwargs):
    raise StdinNotImplementedError("input() was called, but this box does not support input requests.")


def _no_comms(*args, **kwargs):
    raise NotImplementedError(
        "widgets (Jupyter comms) are not supported by this box's kernel; "
        "use the python-ipykernel template for them"
    )


def _build_shell():
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    return LeanShell.instance(config=config, colors="nocolor")


def _prebuild_shell():
    """In the fork server: build the shell once, before any box exists, so that every kernel
    forked from it shares its objects instead of building its own (about 5 MiB each). Its
    IPython directory is a throwaway one; a kernel takes its box's in `_shell_for_box`."""
    import shutil
    import tempfile

    try:
        ipython_dir = tempfile.mkdtemp(prefix="codebox-ipython-")
    except OSError:
        return  # Nowhere to build it: each kernel builds its own.
    os.environ["IPYTHONDIR"] = ipython_dir
    try:
        _build_shell()
    finally:
        del os.environ["IPYTHONDIR"]
        shutil.rmtree(ipython_dir, ignore_errors=True)


def _shell_for_box():
    """The kernel's shell: built now or, in a kernel forked from the fork server, the one
    built there, given what belongs to the box: the IPython directory and profile under its
    home, its working directory, a history session of its own (which holds the directory
    history, `_dh`), and its virtualenv."""
    if not LeanShell.initialized():
        return _build_shell()
    shell = LeanShell.instance()
    shell.init_ipython_dir(None)
    shell.init_profile_dir(None)
    shell.starting_dir = os.getcwd()
    shell.history_manager.reset(new_session=True)
    shell.init_virtualenv()
    return shell


class Kernel:
    def __init__(self, connection):
        self.session = Session(connection.get("key", ""), connection.get("signature_scheme", "hmac-sha256"))
        self.context = zmq.Context()
        self.parent = b"{}"
        self.executing = False
        # Which execution an interrupt was meant for: a SIGINT reaches the main thread only
        # at its next bytecode, possibly once that execution has ended and the next begun,
        # which must not be the one interrupted.
        self.executions = 0
        self.interrupt_for = None
        # Taken by the SIGINT handler (in the main thread, so reentrant) and by the thread
        # that delivers an interrupt (see `deliver_interrupt`).
        self.interrupt_lock = threading.RLock()
        self.sigint_handler = None  # `main`'s, once installed
        # The header date of the request running now: an interrupt sent before it was
        # meant for an earlier execution (the client does not wait for the interrupt's
        # reply before it sends the next cell).
        self.running_sent = ""
        self.last_traceback = []
        self.execution_count = 0

        def url(name):
            transport, ip = connection.get("transport", "tcp"), connection["ip"]
            port = connection[f"{name}_port"]
            return f"{transport}://{ip}:{port}" if transport == "tcp" else f"{transport}://{ip}-{port}"

        self.shell_socket = self.context.socket(zmq.ROUTER)
        self.shell_socket.bind(url("shell"))
        self.control_socket = self.context.socket(zmq.ROUTER)
        self.control_socket.bind(url("control"))
        self.stdin_socket = self.context.socket(zmq.ROUTER)
        self.stdin_socket.bind(url("stdin"))
        # XPUB without drops: past the high-water mark a send waits for the reader instead
        # of dropping the message (a plain PUB socket drops, and a cell that floods output
        # faster than codebox reads it lost output and, worse, its final `idle` status,
        # which left the execution waiting for good). A flooding cell runs at the reader's
        # pace; what codebox keeps of it is capped on its side.
        self.iopub_socket = self.context.socket(zmq.XPUB)
        self.iopub_socket.setsockopt(zmq.XPUB_NODROP, 1)
        self.iopub_socket.linger = 1000
        self.iopub_socket.bind(url("iopub"))
        hb = self.context.socket(zmq.ROUTER)
        hb.bind(url("hb"))
        threading.Thread(target=zmq.proxy, args=(hb, hb), name="codebox-hb", daemon=True).start()

        self.flusher = Flusher(self)
        self.stdout = OutStream(self, "stdout", 1)
        self.stderr = OutStream(self, "stderr", 2)
        sys.__stdout__.flush()
        self.fd_capture = FdCapture(1, self.stdout)

        self.shell = _shell_for_box()
        self.shell.codebox_kernel = self
        builtins.input = _no_stdin
        # ipywidgets and other comm users get a clear error rather than a silent dummy.
        try:
            import comm

            comm.create_comm = _no_comms
        except ImportError:
            pass
        import getpass

        getpass.getpass = _no_stdin

    def publish(self, msg_type, content, parent=None):
        self.session.publish(self.iopub_socket, msg_type, content, self.parent if parent is None else parent)

    def flush_streams(self):
        self.stdout.flush()
        self.stderr.flush()

    def status(self, state, parent):
        self.publish("status", {"execution_state": state}, parent)

    def kernel_info(self):
        import IPython

        return {
            "status": "ok",
            "protocol_version": PROTOCOL_VERSION,
            "implementation": "codebox-lean",
            "implementation_version": "1",
            "language_info": {
                "name": "python",
                "version": ".".join(map(str, sys.version_info[:3])),
                "mimetype": "text/x-python",
                "file_extension": ".py",
                "pygments_lexer": "ipython3",
                "codemirror_mode": {"name": "ipython", "version": 3},
                "nbconvert_exporter": "python",
            },
            "banner": f"Python {sys.version.split()[0]}, IPython {IPython.__version__}",
            "help_links": [],
        }

    def execute(self, msg):
        content = msg["content"]
        code = content.get("code", "")
        silent = bool(content.get("silent", False))
        store_history = bool(content.get("store_history", not silent))
        # No execute_input broadcast: it tells other frontends what runs, and a box's
        # kernel has exactly one client, which sent the code.
        self.last_traceback = []
        count = self.shell.execution_count
        self.executions += 1
        self.running_sent = msg["header"].get("date", "")
        self.executing = True
        try:
            result = self.shell.run_cell(code, store_history=store_history, silent=silent)
        finally:
            self.executing = False
        self.fd_capture.drain()
        self.flush_streams()
        error = result.error_before_exec or result.error_in_exec
        if error is None:
            return {"status": "ok", "execution_count": count, "user_expressions": {}, "payload": []}
        return {
            "status": "error",
            "execution_count": count,
            "ename": type(error).__name__,
            "evalue": str(error),
            "traceback": self.last_traceback,
        }

    def handle_shell(self, idents, raw_header, msg):
        msg_type = msg["header"]["msg_type"]
        self.parent = raw_header
        self.status("busy", self.parent)
        try:
            if msg_type == "execute_request":
                reply = self.execute(msg)
            elif msg_type == "kernel_info_request":
                reply = self.kernel_info()
            elif msg_type == "is_complete_request":
                status, indent = self.shell.input_transformer_manager.check_complete(msg["content"].get("code", ""))
                reply = {"status": status, "indent": " " * (indent or 0)} if status == "incomplete" else {"status": status}
            else:
                reply = None  # Not offered by this kernel; the client times out or moves on.
            if reply is not None:
                self.session.send(self.shell_socket, msg_type.replace("_request", "_reply"), reply, self.parent, idents)
        finally:
            self.status("idle", self.parent)

    def deliver_interrupt(self, execution):
        """SIGINT the main thread until its handler took the interrupt meant for `execution`,
        or that execution ended.

        Once is not always enough: a signal that lands after the main thread let go of the
        GIL to block (time.sleep) but before it entered the system call trips the handler
        without interrupting the call, which then sleeps its full length. That moment is
        just when this thread, which needs the GIL, gets to run. The lock makes a signal
        sent here and the handler taking the interrupt exclusive, so a cell is never
        interrupted twice for one request. A cell that set a SIGINT handler of its own gets
        one signal, as in Python; a cell in C code that never looks at signals, about a
        second of them."""
        main = threading.main_thread().ident
        delay = 0.005
        for _ in range(10):
            with self.interrupt_lock:
                if self.interrupt_for != execution or not self.executing or self.executions != execution:
                    return
                signal.pthread_kill(main, signal.SIGINT)
                if signal.getsignal(signal.SIGINT) is not self.sigint_handler:
                    return
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def serve_control(self):
        """The control channel, in its own thread so that it answers while a cell runs."""
        while True:
            got = self.session.recv(self.control_socket)
            if got is None:
                continue
            idents, parent, msg = got
            msg_type = msg["header"]["msg_type"]
            if msg_type == "interrupt_request":
                if self.executing and not _sent_before(msg["header"].get("date", ""), self.running_sent):
                    with self.interrupt_lock:
                        self.interrupt_for = self.executions
                    threading.Thread(target=self.deliver_interrupt, args=(self.executions,), daemon=True).start()
                self.session.send(self.control_socket, "interrupt_reply", {"status": "ok"}, parent, idents)
            elif msg_type == "shutdown_request":
                restart = bool(msg["content"].get("restart", False))
                reply = {"status": "ok", "restart": restart}
                self.session.send(self.control_socket, "shutdown_reply", reply, parent, idents)
                self.flush_streams()
                self.publish("shutdown_reply", reply, parent)
                time.sleep(0.05)  # Let the PUB socket hand the last messages over.
                os._exit(0)
            elif msg_type == "kernel_info_request":
                self.session.send(self.control_socket, "kernel_info_reply", self.kernel_info(), parent, idents)

    def serve(self):
        threading.Thread(target=self.serve_control, name="codebox-control", daemon=True).start()
        self.flusher.start()
        # Every thread of the kernel's own is started, with SIGINT blocked (see `main`):
        # a SIGINT sent to the process now finds the main thread, the one that runs cells.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        while True:
            got = self.session.recv(self.shell_socket)
            if got is not None:
                self.handle_shell(*got)


def main(argv):
    path = argv[argv.index("-f") + 1]
    with open(path) as f:
        connection = json.load(f)
    # Like ipykernel: keep the working directory off sys.path while the kernel loads, so a
    # user's file cannot shadow its imports; user code gets it back below.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The kernel's threads inherit this mask, so that none of them takes a SIGINT meant for
    # the cell; `serve` unblocks it in the main thread once they are all started.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    kernel = Kernel(connection)
    sys.stdout, sys.stderr = kernel.stdout, kernel.stderr

    def on_sigint(signum, frame):
        # An interrupt request stops the execution it was sent for only: one that lands
        # between cells, or after its execution ended, is dropped. A SIGINT from elsewhere
        # (the cell's own `os.kill`) stops the running cell, as in Python.
        with kernel.interrupt_lock:
            meant_for, kernel.interrupt_for = kernel.interrupt_for, None
        if kernel.executing and meant_for in (None, kernel.executions):
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    kernel.sigint_handler = on_sigint
    sys.path.insert(0, "")
    gc.freeze()
    gc.enable()
    kernel.serve()


# Under the fork server (forkserver.py) this module is loaded once and each kernel is a fork.
if not globals().get("_CODEBOX_FORKSERVER"):
    main(sys.argv[1:])
else:
    _prebuild_shell()
