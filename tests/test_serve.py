"""`leanvision serve` over HTTP on 127.0.0.1: an exported bundle's handler.py answers JSON bodies, raw image bodies and
image URLs (from a local file server); bad requests get 400 (or 413) with a message, an internal error a generic 500;
no response carries a traceback or a local path. Every request has a timeout and both servers stop at the end."""

import base64
import http.client
import io
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from leanvision.hub_cards.export import export_model
from leanvision.hub_cards.serve import INTERNAL_ERROR, make_server
from test_attention import ROOT

TIMEOUT = 60
MAX_BODY_BYTES = 2_000_000


def png_bytes(width=48, height=40, seed=0, format="PNG") -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height but which holds almost no pixel data: refused from its header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def request(url: str, body: bytes | None = None, content_type: str | None = None, method: str = "POST"):
    """(status, parsed JSON body, raw body text) of one bounded request."""
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    return status, json.loads(text), text


def post_json(url: str, payload) -> tuple:
    return request(url, json.dumps(payload).encode(), "application/json")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A local file server on a free port serving image.png; stopped at the end."""
    folder = tmp_path_factory.mktemp("files")
    (folder / "image.png").write_bytes(png_bytes())
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(TIMEOUT)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`leanvision serve` of an exported DTP-ViT on a free port in a subprocess: (URL, export folder, log path)."""
    root = tmp_path_factory.mktemp("serve")
    export = root / "export"
    export_model(os.path.join(ROOT, "dtp_vit"), str(export))
    log = root / "server.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(root / "hf_modules"))
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "leanvision.cli", "serve", str(export), "--port", "0",
             "--max-body-bytes", str(MAX_BODY_BYTES)],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 300)
        line = process.stdout.readline() if ready else ""
        assert line.startswith("serving "), (line, log.read_text()[-3000:])
        url = line.split(" on ")[-1].strip()
        assert url.startswith("http://127.0.0.1:"), line
        yield url, export, log
    finally:
        process.terminate()
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)


def assert_public(text: str, *folders):
    assert "Traceback" not in text and 'File "' not in text, text
    for folder in folders:
        assert str(folder) not in text, text


def test_json_raw_and_url_bodies_get_the_same_classification(served, files):
    url, export, _ = served
    image = png_bytes()
    answers = {
        "json": post_json(url, {"inputs": base64.b64encode(image).decode()}),
        "raw png": request(url, image, "image/png"),
        "url": post_json(url, {"inputs": f"{files}/image.png"}),
    }
    labels = set(json.loads((export / "config.json").read_text())["id2label"].values())
    for how, (status, answer, text) in answers.items():
        assert status == 200, (how, text)
        assert_public(text, export)
        assert answer == answers["json"][1], how
    answer = answers["json"][1]
    assert all(set(item) == {"label", "score"} for item in answer) and {item["label"] for item in answer} <= labels
    scores = [item["score"] for item in answer]
    assert scores == sorted(scores, reverse=True) and all(0 <= score <= 1 for score in scores)

    status, top3, _ = post_json(url, {"inputs": base64.b64encode(image).decode(), "parameters": {"top_k": 3}})
    assert status == 200 and top3 == answer[:3]
    status, jpeg_answer, _ = request(url, png_bytes(format="JPEG"), "image/jpeg")
    assert status == 200 and len(jpeg_answer) == len(answer)
    status, health, _ = request(url + "/health", method="GET")
    assert status == 200 and health == {"status": "ok", "task": "image-classification"}


BAD_REQUESTS = [
    ("bad base64", {"inputs": "not base64 at all!"}, None, 400, "base64"),
    ("not an image", {"inputs": base64.b64encode(b"just some text").decode()}, None, 400, "not an image"),
    ("empty body", b"", "application/json", 400, "empty request body"),
    ("empty input", {"inputs": ""}, None, 400, "empty input"),
    ("no inputs", {"parameters": {"top_k": 2}}, None, 400, "no 'inputs'"),
    ("unknown parameter", {"inputs": "PLACEHOLDER", "parameters": {"temperature": 0.5}}, None, 400,
     "unknown parameter(s) ['temperature']"),
    ("bad parameter value", {"inputs": "PLACEHOLDER", "parameters": {"top_k": "three"}}, None, 400, "top_k"),
    ("oversized image", png_header_only(8000, 8000), "image/png", 400, "8000x8000 pixels, over the limit"),
    ("truncated image", png_bytes()[:200], "image/png", 400, "truncated or corrupt"),
    ("invalid JSON", b'{"inputs": ', "application/json", 400, "not valid JSON"),
    ("missing URL", {"inputs": "FILES/nowhere.png"}, None, 400, "HTTP 404"),
    ("other scheme", {"inputs": "file:///etc/passwd"}, None, 400, "only http:// and https://"),
    ("unsupported type", b"inputs=1", "application/x-www-form-urlencoded", 415, "unsupported Content-Type"),
]


@pytest.mark.parametrize("case, body, content_type, status, message", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_clear_error(served, files, case, body, content_type, status, message):
    url, export, _ = served
    if isinstance(body, dict):
        text = json.dumps(body).replace("PLACEHOLDER", base64.b64encode(png_bytes()).decode()).replace("FILES", files)
        body, content_type = text.encode(), "application/json"
    got_status, answer, text = request(url, body, content_type)
    assert got_status == status, (case, text)
    assert set(answer) == {"error"} and message in answer["error"], (case, answer)
    assert_public(text, export)


def test_a_body_over_the_limit_is_refused_unread(served):
    url, _, _ = served
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        connection.putrequest("POST", "/")
        connection.putheader("Content-Type", "image/png")
        connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        connection.endheaders()
        response = connection.getresponse()
        status, answer = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 413 and "over the limit" in answer["error"]


def test_the_server_log_keeps_no_request_error_as_a_crash(served):
    _, _, log = served
    time.sleep(0.2)  # the log line of the last request
    assert "Traceback" not in log.read_text()


FAILING_HANDLER = """
import os
class EndpointHandler:
    task = "image-classification"
    def __init__(self, path):
        self.path = path
    def __call__(self, data):
        if data.get("inputs") == "value error":
            raise ValueError(f"cannot read {os.path.join(self.path, 'model.safetensors')}")
        raise RuntimeError(f"crashed in {self.path}")
"""


def test_a_handler_crash_answers_a_generic_500_without_path_or_traceback_and_other_errors_are_json(tmp_path):
    (tmp_path / "handler.py").write_text(FAILING_HANDLER)
    server = make_server(str(tmp_path), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        status, answer, text = post_json(url, {"inputs": "crash"})
        assert status == 500 and answer == {"error": INTERNAL_ERROR}
        assert_public(text, tmp_path)
        status, answer, text = post_json(url, {"inputs": "value error"})
        assert status == 400 and answer == {"error": "cannot read <model folder>/model.safetensors"}
        assert_public(text, tmp_path)
        status, answer, _ = request(url, b"{}", "application/json", method="PUT")
        assert status == 501 and "Unsupported method" in answer["error"]
        with pytest.raises(ValueError, match="cannot listen on 127.0.0.1"):
            make_server(str(tmp_path), port=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
