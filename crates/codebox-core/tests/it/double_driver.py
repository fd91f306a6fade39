"""A plain-Python stand-in for a Jupyter kernel, used only by codebox-core's own tests.

Reads one JSON request per line on stdin and answers with codebox event JSON lines on stdout.
It keeps globals between requests, separates stdout and stderr, turns exceptions into error
events, offers `IPython.display.display` for raw MIME bundles, and shows matplotlib figures
as PNGs on `plt.show()` when matplotlib is installed.
"""
import ast, base64, builtins, io, json, signal, sys, traceback, types

PROTOCOL_OUT = sys.stdout
running = False


def emit(obj):
    PROTOCOL_OUT.write(json.dumps(obj) + "\n")
    PROTOCOL_OUT.flush()


def on_sigint(signum, frame):
    if running:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, on_sigint)


class EventStream(io.TextIOBase):
    def __init__(self, kind):
        self.kind = kind

    def writable(self):
        return True

    def write(self, text):
        if text:
            emit({"type": self.kind, "text": text})
        return len(text)


def display(obj, raw=False, **_):
    if raw and isinstance(obj, dict):
        data = obj
    elif hasattr(obj, "savefig"):
        buf = io.BytesIO()
        obj.savefig(buf, format="png")
        data = {"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": repr(obj)}
    else:
        data = {"text/plain": repr(obj)}
    emit({"type": "display", "data": data})


ipython = types.ModuleType("IPython")
ipython_display = types.ModuleType("IPython.display")
ipython_display.display = display
ipython.display = ipython_display
sys.modules["IPython"] = ipython
sys.modules["IPython.display"] = ipython_display


def no_input(*_):
    raise RuntimeError("input() is not available: this box has no stdin")


builtins.input = no_input

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def show(*_, **__):
        for num in plt.get_fignums():
            display(plt.figure(num))
        plt.close("all")

    plt.show = show
except ImportError:
    pass

namespace = {"__name__": "__main__"}
count = 0
sys.stdout = EventStream("stdout")
sys.stderr = EventStream("stderr")

for line in sys.stdin:
    request = json.loads(line)
    count += 1
    outcome = "ok"
    try:
        running = True
        tree = ast.parse(request["code"], "<cell>")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<cell>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
            if value is not None:
                emit({"type": "result", "data": {"text/plain": repr(value)}, "execution_count": count})
    except KeyboardInterrupt:
        outcome = "interrupted"
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything
        outcome = "error"
        emit({
            "type": "error",
            "name": type(exc).__name__,
            "value": str(exc),
            "traceback": traceback.format_exception(exc),
        })
    finally:
        running = False
    emit({"type": "done", "outcome": outcome, "execution_count": count})
