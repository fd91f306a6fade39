# Runs first in a built-in kernel. When the box has a network allowlist, its network
# namespace has only `lo`, and codebox's proxy listens on a Unix socket in the kernel's
# runtime directory (CODEBOX_PROXY_SOCKET). This thread makes that proxy reachable as
# 127.0.0.1:3128 inside the box, where HTTP_PROXY and HTTPS_PROXY point.
def _codebox_forward_network():
    import os
    import signal
    import socket
    import threading

    path = os.environ.pop("CODEBOX_PROXY_SOCKET", None)
    if not path:
        return
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 3128))
    listener.listen(64)

    def pump(src, dst, done):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if done.acquire(blocking=False):
            return  # The other direction is still running; it closes both.
        src.close()
        dst.close()

    def serve():
        # Its threads leave a SIGINT sent to the kernel to the thread that runs cells.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(path)
            except OSError:
                client.close()
                upstream.close()
                continue
            done = threading.Lock()
            threading.Thread(target=pump, args=(client, upstream, done), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, done), daemon=True).start()

    threading.Thread(target=serve, name="codebox-net", daemon=True).start()


_codebox_forward_network()
del _codebox_forward_network
