"""`leanvision serve`: an exported bundle's handler.py over HTTP on this machine, before publishing.

The bundle's `handler.py` is imported from the folder path as the Inference Endpoints container imports it, and its
`EndpointHandler(folder)` answers `POST /` requests: a JSON body `{"inputs": ..., "parameters": {...}}`, or a raw
image body (`Content-Type: image/png`, `image/jpeg`, ... as the Hub widget sends it) which becomes `{"inputs":
<bytes>}`. Answers: 200 with the handler's JSON, 400 `{"error": message}` for a bad request (the handler's
`ValueError`), 413 for a body over the size limit, 500 `{"error": "internal server error"}` for anything else (the
traceback goes to this process's log, never into a response). `GET /health` answers `{"status": "ok", "task": ...}`.
Standard library only (`http.server.ThreadingHTTPServer`); bound to 127.0.0.1 unless told otherwise.
"""

import argparse
import importlib.util
import json
import logging
import os
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# Room for a 20 MiB image in base64 (4/3 of it) plus the JSON around it.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
# Seconds a connection may stall while sending its request.
SOCKET_TIMEOUT = 30
JSON_TYPES = ("application/json", "text/json", "")
RAW_TYPES = ("application/octet-stream",)
INTERNAL_ERROR = "internal server error"
MAX_MESSAGE_CHARS = 1000

logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the server refuses before it reaches the handler: an HTTP status and a message."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def load_handler(export_dir: str):
    """`EndpointHandler(export_dir)` of the bundle's handler.py, imported from its path (a module of its own, not
    registered in sys.modules), as the endpoint container does."""
    folder = os.path.abspath(export_dir)
    path = os.path.join(folder, "handler.py")
    if not os.path.isfile(path):
        raise ValueError(f"{export_dir!r} has no handler.py: export the model again with `leanvision export`")
    spec = importlib.util.spec_from_file_location("handler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(folder)


def public_message(err: Exception, folder: str) -> str:
    """The first line of a bad-request message, without the served folder's or the home folder's path, cut to a
    bounded length."""
    lines = str(err).strip().splitlines() or ["bad request"]
    message = lines[0].replace(folder, "<model folder>")
    home = os.path.expanduser("~")
    if len(home) > 1:
        message = message.replace(home, "~")
    return message[:MAX_MESSAGE_CHARS]


class _RequestHandler(BaseHTTPRequestHandler):
    server_version = "leanvision-serve"
    sys_version = ""
    timeout = SOCKET_TIMEOUT

    def do_GET(self):
        if self.path.split("?")[0] in ("/", "/health"):
            self._send(HTTPStatus.OK, {"status": "ok", "task": getattr(self.server.endpoint, "task", None)})
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": "no such path; POST requests to /"})

    def do_POST(self):
        if self.path.split("?")[0] != "/":
            self._send(HTTPStatus.NOT_FOUND, {"error": "no such path; POST requests to /"})
            return
        try:
            data = self._read_payload()
        except RequestError as err:
            self.close_connection = True
            self._send(err.status, {"error": str(err)})
            return
        try:
            answer = self.server.endpoint(data)
            body = json.dumps(answer)
        except ValueError as err:
            self._send(HTTPStatus.BAD_REQUEST, {"error": public_message(err, self.server.folder)})
            return
        except Exception:  # noqa: BLE001 - logged here, never sent
            logger.exception("the handler failed on a request")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": INTERNAL_ERROR})
            return
        self._send(HTTPStatus.OK, body=body)

    def _read_payload(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the Content-Length header is not a number") from None
        if length < 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the Content-Length header is negative")
        limit = self.server.max_body_bytes
        if length > limit:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the request body of {length} bytes is over the limit of {limit} bytes")
        if length == 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, "empty request body: send JSON with 'inputs' or an image")
        try:
            body = self.rfile.read(length)
        except OSError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body could not be read in time") from None
        if len(body) < length:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body is shorter than its Content-Length")
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type.startswith("image/") or content_type in RAW_TYPES:
            return {"inputs": body}
        if content_type in JSON_TYPES:
            try:
                return json.loads(body)
            except UnicodeDecodeError:
                raise RequestError(HTTPStatus.BAD_REQUEST, "the request body is not UTF-8 JSON") from None
            except json.JSONDecodeError as err:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"the request body is not valid JSON: {err.msg}") from None
        raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f"unsupported Content-Type {content_type!r}: send application/json or an image/* body")

    def _send(self, status: HTTPStatus, payload=None, body: str | None = None):
        data = (body if body is not None else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code, message=None, explain=None):
        """Errors http.server raises itself (an unsupported method, a malformed request line) as JSON too."""
        self.close_connection = True
        status = HTTPStatus(code)
        self._send(status, {"error": message or status.phrase})

    def log_message(self, format, *args):
        logger.info("%s %s", self.address_string(), format % args)


def make_server(export_dir: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> ThreadingHTTPServer:
    """A server (not yet serving) for the bundle in `export_dir` on host:port (port 0: a free one, see
    `server.server_address`)."""
    endpoint = load_handler(export_dir)
    try:
        server = ThreadingHTTPServer((host, port), _RequestHandler)
    except OSError as err:
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    server.daemon_threads = True
    server.endpoint = endpoint
    server.folder = os.path.abspath(export_dir)
    server.max_body_bytes = max_body_bytes
    return server


def serve(export_dir: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Serves the bundle in `export_dir` until interrupted; prints the URL once it is ready."""
    server = make_server(export_dir, host, port, max_body_bytes)
    bound_host, bound_port = server.server_address[:2]
    print(f"serving {export_dir} ({getattr(server.endpoint, 'task', '?')}) on http://{bound_host}:{bound_port}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `leanvision serve` arguments."""
    parser.add_argument("export_dir", help="a folder written by `leanvision export` or `publish --dry-run`")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on (default: {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"largest request body accepted (default: {DEFAULT_MAX_BODY_BYTES})")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(args.export_dir, args.host, args.port, args.max_body_bytes)
    return 0

