"""Lab end-to-end tests: they need root, the installed tartand and `tartan` plugin.

Every lab a test makes is removed in a finalizer (`lab down`), also when the test fails.
"""

from __future__ import annotations

import os

import pytest
from lab_env import VENV_BIN


def pytest_collection_modifyitems(config, items):
    missing = [n for n in ("tartand", "tartan", "tartanctl") if not (VENV_BIN / n).exists()]
    reason = ("needs root" if os.geteuid() != 0 else
              f"{', '.join(missing)} not installed in {VENV_BIN}: run `make venv`")
    if os.geteuid() == 0 and not missing:
        return
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=reason))
