# Starts ipykernel the way `python -m ipykernel_launcher` does, minus the debugger.
#
# ipykernel imports debugpy while it builds the kernel only to offer the Jupyter
# debugger, which codebox never uses; that import is about a quarter of a cold start.
# Hiding debugpy while the kernel initializes makes ipykernel skip it, and the entry is
# removed again before any user code runs, so `import debugpy` still works in a cell.
#
# Every thread ipykernel starts while it initializes (control, shell channel, IOPub,
# heartbeat, output watchers) starts with SIGINT blocked, which it inherits: the interrupt
# it sends to its own process must be taken by the main thread, which runs the cells. A
# thread that took it instead would leave a cell that sleeps asleep.
#
# The collector is also paused while ipykernel loads: the import creates many objects
# that all live for the whole session, so collecting during it only costs time. They
# are then frozen out of later collections, which user code's collections skip too.
import gc
import signal
import sys

gc.disable()
from pathlib import Path

# Like ipykernel_launcher: keep the working directory off sys.path while ipykernel loads,
# so a user's file cannot shadow its imports; IPython puts it back for user code.
if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
    del sys.path[0]

_hidden = "debugpy" not in sys.modules
if _hidden:
    sys.modules["debugpy"] = None

from ipykernel.kernelapp import IPKernelApp

app = IPKernelApp.instance()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
app.initialize(sys.argv[1:])
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
if _hidden:
    del sys.modules["debugpy"]
del _hidden
gc.freeze()
gc.enable()
app.start()
