
# codebox's kernel fork server: this process has imported everything the lean kernel
# imports, and built its IPython shell, and runs no code of anyone's; each lean kernel is a
# fork of it, so the pages of those imports and of that shell are shared between kernels
# instead of being built again in every one.
#
# It runs after the lean kernel's source (with `_CODEBOX_FORKSERVER` set, so that its
# `main` does not run), as `python -c <lean kernel + this> <network forwarder source>`, with
# a Unix socket to codebox on descriptor CODEBOX_FORKSERVER_FD. It reads only single bytes
# there, each with one descriptor: a socket to one new kernel's keeper. It forks at once and
# never reads what the request says: a request names a box's environment, which may hold
# that box's secrets, and nothing of one box may stay in this process's memory, which every
# later kernel inherits. The fork, the keeper, reads the request and:
#
# - joins the namespaces of the box bubblewrap made for this kernel (bubblewrap runs a
#   placeholder there that holds them), its user namespace's parent first;
# - forks the kernel into the box's pid namespace and waits for it, telling codebox its pid
#   and, when it exits, its wait status (unreaped until codebox has heard it, so the pid is
#   not reused while codebox may still signal it); codebox closing the socket kills it, and
#   nothing else does: the kernels of a fork server that dies live on.
#
# The kernel, before any code of the box runs: enters the box's cgroup, joins the other
# namespaces, takes the box's uid and gid, drops every capability (bounding and ambient sets
# too), sets no-new-privileges, the box's rlimits and seccomp filters, closes every other
# descriptor, takes the box's environment, working directory and Python path, reseeds
# `random`, and reads its own connection file (so its signing key never passes through here).
import ctypes
import importlib.machinery
import os
import random
import resource
import select
import signal
import socket
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NS_GET_PARENT = 0xB702
PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
MAX_FDS = 32

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option, arg2=0, arg3=0, what="prctl"):
    _check(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)), what)


def _setns(fd, nstype, what):
    _check(_libc.setns(fd, nstype), f"joining the box's {what} namespace")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _apply_seccomp(program):
    count = len(program) // ctypes.sizeof(_SockFilter)
    filters = (_SockFilter * count).from_buffer_copy(program)
    prog = _SockFprog(count, filters)
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def _drop_capabilities():
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap, what="dropping the capability bounding set")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="clearing ambient capabilities")
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(header, data), "dropping capabilities")


def _read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _recv_request(conn):
    """A request: a 4-byte length and that much JSON, the descriptors on its first bytes."""
    head, fds, _, _ = socket.recv_fds(conn, 4, MAX_FDS)
    while len(head) < 4:
        more = conn.recv(4 - len(head))
        if not more:
            raise EOFError("codebox closed the request")
        head += more
    (length,) = struct.unpack("<I", head)
    body = bytearray()
    while len(body) < length:
        more = conn.recv(min(65536, length - len(body)))
        if not more:
            raise EOFError("codebox closed the request")
        body += more
    return json.loads(body), fds


def _send(conn, message):
    conn.sendall(json.dumps(message).encode() + b"\n")


def _kernel(request, fds, net_forwarder):
    """In the forked kernel: take on the box's confinement, then run the lean kernel."""
    fd = lambda name: fds[request["fds"][name]]  # noqa: E731
    os.dup2(fd("stdout"), 1)
    os.dup2(fd("stderr"), 2)
    os.setsid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, what="tying the kernel to its keeper")
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for procs in request["fds"]["cgroup_procs"]:
        os.write(fds[procs], b"0")
    for name, nstype in (("mnt", CLONE_NEWNS), ("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC),
                         ("uts", CLONE_NEWUTS), ("cgroup", CLONE_NEWCGROUP)):
        _setns(fd(name), nstype, name)
    if request["nested_user"]:
        _setns(fd("user"), CLONE_NEWUSER, "user")
    os.chdir(request["cwd"])
    gid, uid = request["gid"], request["uid"]
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _drop_capabilities()
    _prctl(PR_SET_NO_NEW_PRIVS, 1, what="setting no-new-privileges")
    for res, value in request["rlimits"]:
        hard = resource.getrlimit(res)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(res, (value, value))
    for index in request["fds"]["seccomp"]:
        _apply_seccomp(_read_all(fds[index]))
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.environ.clear()
    os.environ.update(dict(request["env"]))
    # What the interpreter would have read from the environment at start.
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[1:1] = extra
    # ... and the `sitecustomize` it would have run from there (this process ran the
    # system's, if any, before the box existed).
    if extra and importlib.machinery.PathFinder.find_spec("sitecustomize", extra) is not None:
        sys.modules.pop("sitecustomize", None)
        try:
            import sitecustomize  # noqa: F401
        except Exception as e:
            sys.stderr.write(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{type(e).__name__}: {e}\n")
    random.seed()
    sys.argv = ["-c", "-f", request["connection_file"]]
    exec(compile(net_forwarder, "<codebox-network>", "exec"), {"__name__": "__codebox_network__"})
    main(sys.argv[1:])


def _keeper(conn, net_forwarder):
    """In the fork that keeps one kernel: join the box, fork the kernel, report on it.

    It lives as long as codebox's end of its socket, not as long as the fork server: a fork
    server that dies takes no running kernel with it."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        request, fds = _recv_request(conn)
        user = fds[request["fds"]["user"]]
        # The box's namespaces belong to its outer user namespace, the one bubblewrap made
        # first (the box's own is nested in it, to forbid making more): join that one, then
        # the pid namespace, whose children the kernel will be born into.
        outer = fcntl.ioctl(user, NS_GET_PARENT)
        request["nested_user"] = os.fstat(outer).st_ino != os.stat("/proc/self/ns/user").st_ino
        if not request["nested_user"]:
            os.close(outer)
            outer = user
        if os.geteuid() == 0:
            os.setgroups([])
        _setns(outer, CLONE_NEWUSER, "outer user")
        _setns(fds[request["fds"]["pid"]], CLONE_NEWPID, "pid")
        pid = os.fork()
        if pid == 0:
            try:
                conn.close()
                _kernel(request, fds, net_forwarder)
            except BaseException as e:  # Nothing may run past a failed confinement.
                try:
                    os.write(2, f"codebox: the kernel could not take on its box: {e}\n".encode())
                finally:
                    os._exit(70)
            os._exit(0)
        for f in fds:
            os.close(f)
    except BaseException as e:
        try:
            _send(conn, {"error": str(e)})
        finally:
            os._exit(1)
    _send(conn, {"pid": pid})
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(conn.fileno(), select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if pidfd in ready:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            status = info.si_status if info.si_code == os.CLD_EXITED else None
            signal_number = None if info.si_code == os.CLD_EXITED else info.si_status
            try:
                _send(conn, {"exited": status, "signal": signal_number})
                conn.recv(1)  # codebox has heard it (or is gone): the pid may now be reused
            except OSError:
                pass
            os.waitpid(pid, 0)
            os._exit(0)
        # codebox closed the socket (or said something it should not): the kernel goes.
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os._exit(0)


def _serve(control_fd, net_forwarder):
    control = socket.socket(fileno=control_fd)
    # Keepers are reaped by the system: this process never waits for anything.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    gc.collect()
    gc.freeze()
    control.sendall(b"R")
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 1, 1)
        except InterruptedError:
            continue
        if not data:
            os._exit(0)  # codebox is gone
        for fd in fds:
            if os.fork() == 0:
                control.close()
                _keeper(socket.socket(fileno=fd), net_forwarder)
                os._exit(0)
            os.close(fd)


_serve(int(os.environ.pop("CODEBOX_FORKSERVER_FD")), sys.argv[1])
