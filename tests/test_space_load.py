"""The demo Space under load (hub_cards/space/load_test.py): 40 concurrent requests through Gradio's queue against
app.py on 127.0.0.1, started where leanvision cannot be imported, with tiny exports of the four families: every good
answer equals the models run in-process, every bad upload is refused with its message, the server's memory stays
bounded (the oversized image is refused from its header, never decoded) and it answers again afterwards."""

import importlib.util
import os
import shutil

import pytest
import torch

from test_space import load_app_module, save_tiny_exports, start_app, wait_for_server
from leanvision.hub_cards import publish_space as space_module

# The server's RSS may grow by this much during the load: decoding the 9000 x 9000 upload alone would take 243 MiB.
RSS_GROWTH_LIMIT_MIB = 120


def load_test_module():
    spec = importlib.util.spec_from_file_location("space_load_test",
                                                  os.path.join(space_module.SPACE_DIR, "load_test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_forty_concurrent_requests_through_the_queue(tmp_path):
    pytest.importorskip("gradio_client", reason="gradio_client is not installed (pip install -e '.[dev]')")
    app = load_app_module()
    load = load_test_module()
    exports = save_tiny_exports(tmp_path / "models")
    app_dir = tmp_path / "space"
    app_dir.mkdir()
    shutil.copy(os.path.join(space_module.SPACE_DIR, "app.py"), app_dir / "app.py")
    port, log_path = load.free_port(), tmp_path / "app.log"
    process = start_app(app_dir, exports, port, log_path)
    try:
        requests = load.make_requests(str(tmp_path / "requests"), 40)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the server runs (OMP_NUM_THREADS=1); two threads crawl on a busy machine
        try:
            load.expected_answers(app, app.load_pipelines(exports), requests)
        finally:
            torch.set_num_threads(threads)
        first = next(request for request in requests if not request.bad)
        health = load.Request("health check", first.path, first.labels, first.template, expected=first.expected)
        wait_for_server(process, port, log_path)
        report = load.run_load(f"http://127.0.0.1:{port}/", process.pid, requests, concurrency=8, timeout=60,
                               health_check=health)
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(report)
    assert report["problems"] == [], report["problems"]
    assert (report["requests"], report["good"], report["bad"]) == (40, 33, 7)
    assert report["answered_correctly"] == 33 and report["refused_with_message"] == 7 and report["errors"] == 0
    assert report["healthy_after"] is True
    assert report["rss_peak_mib"] - report["rss_before_mib"] < RSS_GROWTH_LIMIT_MIB, report
    # Different images get different answers: the comparison is not between constants.
    captions = {request.answer[0] for request in requests if not request.bad}
    assert len(captions) > 1 or len({str(request.answer[2]) for request in requests if not request.bad}) > 1
