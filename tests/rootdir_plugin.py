"""The repository root is the `leanvision` package; collect it as a plain folder so pytest never imports its
`__init__.py` under a name derived from the checkout's folder (the installed `leanvision` is what tests import)."""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path, parent):
    if path == parent.config.rootpath:
        return pytest.Dir.from_parent(parent, path=path)
    return None
