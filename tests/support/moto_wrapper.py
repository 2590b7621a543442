"""Runs moto's server on 127.0.0.1 for canary-gateway's tests.

Usage: python moto_wrapper.py [PORT]   (PORT 0 or absent: a free port)

Prints "PORT <n>" on stdout once the socket listens, then serves until its
standard input closes (the test process died or dropped the server) or it is
killed.

moto returns App Mesh's createdAt / lastUpdatedAt as text such as
"31/12/2025, 13:45:00", which the Rust SDK cannot parse (App Mesh's JSON
protocol sends epoch seconds). The WSGI middleware below rewrites those two
fields of JSON responses to epoch seconds (`EpochDates`).

AWS applies each call atomically: a conditional write checks its condition
and writes in one step, and of two racing writers exactly one wins. moto's
backends are plain in-memory objects with no lock, and its threaded server
runs calls concurrently, so under load two racing conditional PutItems could
both pass their condition. `OneCallAtATime` runs one call at a time (after
reading the request's body, so a slow client holds no one up).
"""

import io
import json
import os
import sys
import threading
from datetime import datetime

from werkzeug.serving import WSGIRequestHandler, make_server

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

DATE_FIELDS = ("createdAt", "lastUpdatedAt")
DATE_FORMATS = ("%d/%m/%Y, %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z")


def to_epoch(value):
    """Epoch seconds for one of moto's date strings (0 when unparseable)."""
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(value, fmt).timestamp()
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0


def fix_dates(node):
    """Rewrites the date fields of a decoded JSON document in place; True if any changed."""
    changed = False
    if isinstance(node, dict):
        for key, value in node.items():
            if key in DATE_FIELDS and isinstance(value, str):
                node[key] = to_epoch(value)
                changed = True
            else:
                changed |= fix_dates(value)
    elif isinstance(node, list):
        for item in node:
            changed |= fix_dates(item)
    return changed


class OneCallAtATime:
    """WSGI middleware: runs one call at a time, as AWS applies each atomically.

    The request's body is read before the lock is taken, so a slow client
    holds no one up; the response is joined under the lock."""

    def __init__(self, app):
        self.app = app
        self.one_call = threading.Lock()

    def __call__(self, environ, start_response):
        request = read_request_body(environ)
        environ["wsgi.input"] = io.BytesIO(request)
        environ["CONTENT_LENGTH"] = str(len(request))
        environ["wsgi.input_terminated"] = False
        with self.one_call:
            response = joined(self.app(environ, start_response))
        return [response]


def joined(chunks):
    """A WSGI app's response as one byte string (the iterable closed after)."""
    try:
        return b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()


def read_request_body(environ):
    """The whole request body, by Content-Length or to its end."""
    length = environ.get("CONTENT_LENGTH", "")
    if environ.get("wsgi.input_terminated"):
        return environ["wsgi.input"].read()
    if length.isdigit():
        return environ["wsgi.input"].read(int(length))
    return b""


class EpochDates:
    """WSGI middleware: App Mesh dates as epoch seconds in JSON responses."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"] = status
            captured["headers"] = headers
            return lambda data: None

        body = joined(self.app(environ, capture))
        headers = list(captured.get("headers", []))
        content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
        if b"createdAt" in body or b"lastUpdatedAt" in body or "json" in content_type:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if doc is not None and fix_dates(doc):
                body = json.dumps(doc).encode()
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Content-Length", str(len(body))))
        start_response(captured.get("status", "500 INTERNAL SERVER ERROR"), headers)
        return [body]


class QuietHandler(WSGIRequestHandler):
    """No access log on stderr."""

    def log_request(self, *args, **kwargs):
        pass


def exit_when_stdin_closes():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    app = OneCallAtATime(EpochDates(DomainDispatcherApplication(create_backend_app)))
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=QuietHandler)
    print(f"PORT {server.server_port}", flush=True)
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
