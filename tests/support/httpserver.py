"""Real HTTP servers on 127.0.0.1, plain or TLS with a test CA, for the download tests."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class ServedFiles:
    routes: dict[str, Route] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    served: ServedFiles

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self.served.hits[self.path] = self.served.hits.get(self.path, 0) + 1
        route = self.served.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        route(self)

    def log_message(self, *args) -> None:
        pass


class LocalServer:
    def __init__(self, tls: LocalCA | None = None) -> None:
        self.served = ServedFiles()
        handler = type("Handler", (_Handler,), {"served": self.served})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.server_cert, tls.server_key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, path: str, handler: Route) -> str:
        self.served.routes[path] = handler
        return self.base + path


def body(data: bytes, status: int = 200, content_type: str = "text/plain; charset=utf-8",
         headers: dict[str, str] | None = None, declared_length: int | None = None) -> Route:
    def respond(request: BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(declared_length if declared_length is not None else len(data)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)
    return respond


def sequence(*routes: Route) -> Route:
    """Answer with each route in turn, the last one from then on."""
    calls = {"count": 0}

    def respond(request: BaseHTTPRequestHandler) -> None:
        index = min(calls["count"], len(routes) - 1)
        calls["count"] += 1
        routes[index](request)
    return respond


class LocalCA:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_cert, ca_key = folder / "ca.crt", folder / "ca.key"
        self.server_cert, self.server_key = folder / "server.crt", folder / "server.key"
        csr, ext = folder / "server.csr", folder / "server.ext"

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(self.ca_cert),
            "-days", "2", "-subj", "/CN=calico-crd-hook test CA")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.server_key), "-out", str(csr),
            "-subj", "/CN=127.0.0.1")
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(self.server_cert), "-days", "2", "-extfile", str(ext))
