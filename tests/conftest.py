import os

# No network in tests: fail fast instead of retrying Hub downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# Under pytest-xdist (`make test` runs two workers on a 2-core machine) each worker, and every process it starts,
# uses one thread, and each worker gets its own cache of remote-code modules: transformers names the module of a
# local folder after the folder, so two workers loading exports called "export" would otherwise share files.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import tempfile

    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault(
        "HF_MODULES_CACHE", os.path.join(tempfile.gettempdir(), f"leanvision-hf-modules-{os.getpid()}")
    )

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root():
    return REPO_ROOT
