#!/usr/bin/env python3
"""A small file server over HTTPS and plain HTTP for the TLS fetch tests.

    tls-httpd.py DIR CERT KEY PORTFILE PARENT_PID

Serves DIR on two free loopback ports, HTTPS with CERT and KEY and plain
HTTP, and writes "HTTPS_PORT HTTP_PORT" to PORTFILE once both listen.
GET /slow answers only after 10 seconds (for timeout tests).  It exits
when PARENT_PID is gone, when stdin closes or after 300 seconds, so that
a test that dies cannot leave it behind.
"""

import functools
import http.server
import os
import ssl
import sys
import threading
import time


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(10)
        return super().do_GET()

    def log_message(self, fmt, *args):
        sys.stderr.write("tls-httpd: " + (fmt % args) + "\n")


def main():
    root, cert, key, portfile, parent = sys.argv[1:6]
    handler = functools.partial(Handler, directory=root)

    https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    https.socket = ctx.wrap_socket(https.socket, server_side=True)
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for server in (https, plain):
        threading.Thread(target=server.serve_forever, daemon=True).start()

    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{https.server_address[1]} {plain.server_address[1]}\n")
    os.rename(tmp, portfile)

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            os.kill(int(parent), 0)
        except OSError:
            break
        time.sleep(0.2)


if __name__ == "__main__":
    main()
