"""A small HTTP server for the port tests, run inside a box: `python box_server.py PORT`.

GET /headers  answers the request's path and headers as JSON.
GET /stream   answers chunked: `first;`, then, once the file `release` exists in the working
              directory (the test uploads it after reading the first chunk), `second;`.
GET /ws       a WebSocket (RFC 6455) that echoes every text or binary message.
anything else the working directory's files, as `python -m http.server` serves them.
"""
import base64
import hashlib
import http.server
import json
import os
import struct
import sys
import time

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/headers":
            body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.chunk(b"first;")
            while not os.path.exists("release"):
                time.sleep(0.05)
            self.chunk(b"second;")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        elif self.path == "/ws":
            self.websocket()
        else:
            super().do_GET()

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                self.wfile.write(b"\x88\x00")
                self.wfile.flush()
                return
            if len(data) < 126:
                frame = bytes([0x80 | opcode, len(data)])
            else:
                frame = bytes([0x80 | opcode, 126]) + struct.pack(">H", len(data))
            self.wfile.write(frame + data)
            self.wfile.flush()


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
