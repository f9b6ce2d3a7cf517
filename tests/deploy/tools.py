"""Finding the external tools the deploy tests run (promtool, amtool, prometheus, ...).

A tool that is not installed skips the test that needs it, saying which package brings
it; under ``X0T_REQUIRE_SERVICES=1`` (CI, where ``.ci/run`` installs them) a missing
tool fails the test instead, so a green CI cannot hide a validator that never ran.
"""

from __future__ import annotations

import os
import shutil

import pytest

# Where each tool comes from, for the skip message.
PACKAGES: dict[str, str] = {
    "promtool": "Debian package prometheus",
    "prometheus": "Debian package prometheus",
    "amtool": "Debian package prometheus-alertmanager",
}


def require_tool(name: str) -> str:
    """The absolute path of the executable ``name``; skips (or fails under
    ``X0T_REQUIRE_SERVICES=1``) when it is not on ``PATH``."""
    path = shutil.which(name)
    if path is not None:
        return path
    origin = PACKAGES.get(name, "its package")
    if os.environ.get("X0T_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} not found on PATH ({origin}), and X0T_REQUIRE_SERVICES=1 requires it")
    pytest.skip(
        f"{name} not found on PATH (install {origin}); X0T_REQUIRE_SERVICES=1 fails instead"
    )
