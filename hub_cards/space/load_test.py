"""The demo Space under load: concurrent requests through Gradio's queue, answers checked against the models run
in-process, bad uploads refused with a message, the server's memory watched, and one more request afterwards.

    python hub_cards/space/load_test.py --gsb GSB_EXPORT --qvision QVISION_EXPORT \\
        --classifier DTP_VIT_EXPORT --zero-shot DTP_CLIP_EXPORT --requests 40 --concurrency 8

starts app.py on 127.0.0.1 (a free port) with those models, sends `--requests` requests from `--concurrency` client
threads (gradio_client, `--timeout` seconds each): good uploads of varied images and labels, and a few bad ones (a
text file, a truncated JPEG, an empty file, an image above the app's pixel limit, no image, no labels, a template
without "{}"). Every request runs every configured model (the app has one endpoint). Prints a JSON report: request
and error counts, p50/p95 latency, the server's RSS before / peak / after (from /proc), the load average. Exits 1 when
a good answer differs from the in-process one, a bad request is not refused with a message, or the server is not
healthy afterwards. Linux only (reads /proc).
"""

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

SPACE_DIR = os.path.dirname(os.path.abspath(__file__))
LABEL_SETS = [
    "a red circle, a blue square, a green triangle",
    "a person, an animal, a vehicle, food",
    "a cup of coffee, a rocket, a flower",
]
TEMPLATES = ["a photo of {}", "an image of {}", "{}"]
# 81 million pixels (a 1-bit PNG, quick to write): above the app's limit, below PIL's decompression-bomb error;
# Gradio would decode it to 243 MB of RGB.
OVERSIZED = (9000, 9000)


@dataclass
class Request:
    """One request: the uploaded file (or None), the labels text and the template; `bad` requests must be refused
    with a message containing `refusal`."""

    name: str
    path: str | None
    labels: str
    template: str
    refusal: str = ""
    answer: object = None
    error: str = ""
    seconds: float = 0.0
    expected: object = field(default=None, repr=False)

    @property
    def bad(self) -> bool:
        return bool(self.refusal)


def make_requests(folder: str, count: int = 40) -> list[Request]:
    """`count` requests, 7 of them bad, written under `folder`; good images differ in size, colour and content."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)

    def write(name: str, data: bytes) -> str:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def png(image: Image.Image, name: str) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return write(name, buffer.getvalue())

    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    good_image = png(Image.new("RGB", (32, 32), (200, 30, 30)), "good.png")
    bad = [
        Request("text file", write("notes.png", b"these bytes are not an image"), LABEL_SETS[0], TEMPLATES[0],
                refusal="is not an image file this demo can read"),
        Request("truncated JPEG", write("cut.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 3]), LABEL_SETS[0],
                TEMPLATES[0], refusal="could not be decoded"),
        Request("empty file", write("empty.png", b""), LABEL_SETS[0], TEMPLATES[0],
                refusal="is not an image file this demo can read"),
        Request("oversized image", png(Image.new("1", OVERSIZED, 1), "huge.png"), LABEL_SETS[0],
                TEMPLATES[0], refusal=f"has {OVERSIZED[0]} x {OVERSIZED[1]} pixels, more than"),
        Request("no image", None, LABEL_SETS[0], TEMPLATES[0], refusal="Upload an image first"),
        Request("no labels", good_image, " , ", TEMPLATES[0], refusal="Give at least one candidate label"),
        Request("template without {}", good_image, LABEL_SETS[1], "a photo", refusal="hypothesis_template"),
    ]
    good = []
    for index in range(count - len(bad)):
        height, width = (int(v) for v in rng.integers(24, 160, 2))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[: height // 2] = rng.integers(0, 256, 3, dtype=np.uint8)  # a flat band: images differ in content
        path = png(Image.fromarray(pixels), f"good-{index:02d}.png")
        good.append(Request(f"good {index}", path, LABEL_SETS[index % 3], TEMPLATES[index % 3]))
    # Bad requests spread among the good ones, so the queue holds both at once.
    requests = list(good)
    for offset, request in enumerate(bad):
        requests.insert(offset * len(requests) // len(bad) + offset, request)
    return requests


def expected_answers(app, pipes: dict, requests: list[Request]) -> None:
    """Sets `expected` of every good request: the app's models run in this process (`app.run_models`)."""
    for request in requests:
        if not request.bad:
            with Image.open(request.path) as image:
                request.expected = app.run_models(pipes, image.convert("RGB"), request.labels, request.template)


def label_scores(value) -> dict | str:
    """label -> score of a gr.Label output as the client receives it (or the text "not configured")."""
    if isinstance(value, dict) and "confidences" in value:
        return {item["label"]: item["confidence"] for item in value["confidences"]}
    return value


def mismatch(answer, expected, tolerance: float = 1e-5) -> str:
    """What differs between a client's answer and the in-process outputs (captions, labels, summary); '' if none."""
    captions_gsb, captions_qvision, classes, zero_shot, _, _, summary = expected
    problems = []
    for name, got, want in (("GatedSparseBlip caption", answer[0], captions_gsb),
                            ("QVision caption", answer[1], captions_qvision), ("summary", answer[6], summary)):
        if got != want:
            problems.append(f"{name} {got!r} != {want!r}")
    for name, got, want in (("DTP-ViT", label_scores(answer[2]), classes),
                            ("DTP-CLIP", label_scores(answer[3]), zero_shot)):
        if isinstance(want, dict):
            close = isinstance(got, dict) and got.keys() == want.keys() and all(
                abs(got[key] - want[key]) <= tolerance for key in want)
        else:
            close = got == want
        if not close:
            problems.append(f"{name} labels {got} != {want}")
    return "; ".join(problems)


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")


class RssSampler(threading.Thread):
    """Samples a process's RSS every `interval` seconds until stopped; `peak` is the largest sample."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, rss_bytes(pid)
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def send(client, request: Request, timeout: float) -> None:
    """One request through the queue; records the answer or the error message and the time taken."""
    from gradio_client import handle_file

    start = time.monotonic()
    try:
        job = client.submit(handle_file(request.path) if request.path else None, request.labels, request.template,
                            api_name="/predict")
        request.answer = job.result(timeout=timeout)
    except Exception as err:  # the client raises AppError with the app's message; a timeout raises too
        request.error = f"{type(err).__name__}: {err}"
    request.seconds = time.monotonic() - start


def check(requests: list[Request]) -> list[str]:
    """Every good request answered as in-process, every bad one refused with its message."""
    problems = []
    for request in requests:
        if request.bad:
            if request.answer is not None or request.refusal not in request.error:
                problems.append(f"{request.name}: expected a refusal saying {request.refusal!r}, got "
                                f"{request.error or request.answer!r}")
        elif request.error:
            problems.append(f"{request.name}: {request.error}")
        else:
            difference = mismatch(request.answer, request.expected)
            if difference:
                problems.append(f"{request.name}: {difference}")
    return problems


def run_load(url: str, server_pid: int, requests: list[Request], concurrency: int = 8, timeout: float = 60.0,
             health_check: Request | None = None) -> dict:
    """Sends `requests` to the app at `url` from `concurrency` threads and returns the report; `health_check` (a good
    request with `expected` set) is sent once before (warm-up, RSS "before") and once after the load."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
    if health_check is not None:
        send(client, health_check, timeout)
    rss_before = rss_bytes(server_pid)
    sampler = RssSampler(server_pid)
    sampler.start()
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda request: send(client, request, timeout), requests))
    wall = time.monotonic() - start
    rss_peak = sampler.stop()
    problems = check(requests)
    healthy = None
    if health_check is not None:
        health_check.answer, health_check.error = None, ""
        send(client, health_check, timeout)
        after = check([health_check])
        healthy = not after
        problems += [f"after the load: {problem}" for problem in after]
    latencies = sorted(request.seconds for request in requests)
    good = [request for request in requests if not request.bad]
    client.close()
    return {
        "requests": len(requests),
        "good": len(good),
        "bad": len(requests) - len(good),
        "answered_correctly": sum(1 for r in good if not r.error and not mismatch(r.answer, r.expected)),
        "refused_with_message": sum(1 for r in requests if r.bad and r.refusal in r.error),
        "errors": sum(1 for r in good if r.error),
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_peak_mib": round(rss_peak / 2**20, 1),
        "rss_after_mib": round(rss_bytes(server_pid) / 2**20, 1),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "healthy_after": healthy,
        "problems": problems,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(process, port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with code {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"app.py did not listen on port {port} within {timeout:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sys.path.insert(0, SPACE_DIR)
    import app  # noqa: E402  (app.py beside this file)

    for key, (flag, _, task, name) in app.MODELS.items():
        parser.add_argument(flag, dest=key, help=f"{name} ({task}): Hub repo id or local folder")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8, help="client threads sending at once")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per request")
    parser.add_argument("--work-dir", default="outputs/space_load", help="where the request images are written")
    args = parser.parse_args(argv)
    if args.requests < 8 or args.concurrency < 1 or args.timeout <= 0:
        parser.error("--requests must be at least 8 (7 are bad uploads), --concurrency at least 1, --timeout > 0")
    sources = {key: getattr(args, key) for key in app.MODELS}
    if not any(sources.values()):
        parser.error("give at least one model (--gsb, --qvision, --classifier, --zero-shot)")

    requests = make_requests(args.work_dir, args.requests)
    pipes = app.load_pipelines(sources)
    expected_answers(app, pipes, requests)
    health = next(request for request in requests if not request.bad)
    health = Request("health check", health.path, health.labels, health.template, expected=health.expected)

    port = free_port()
    flags = [item for key, source in sources.items() if source for item in (app.MODELS[key][0], source)]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen([sys.executable, os.path.join(SPACE_DIR, "app.py"), *flags, "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(server, port)
        report = run_load(f"http://127.0.0.1:{port}/", server.pid, requests, args.concurrency, args.timeout, health)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(report, indent=2))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
