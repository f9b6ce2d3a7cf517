"""The container image's size: ``deploy/image.sh`` builds it (reusing the cached base
and podman's layer cache), then podman reports the size.

    figures = run()      # {"image_mb": 193.0, "image_build_s": 25.1}

``image_mb`` is the uncompressed size as ``podman images`` shows it, in MB (10^6 bytes):
the base (Debian bookworm minbase with python3, or python:3.11-slim-bookworm where a
registry can be reached) plus the virtual environment. ``image_build_s`` is how long
this build took: warm (cached base, cached dependency layer) unless the cache was empty,
so it is a detail, not a figure to compare across runs. Raises ``RuntimeError`` with the
build's last lines when podman or the build fails.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.report import Suite

REPO = Path(__file__).resolve().parent.parent
IMAGE_SH = REPO / "deploy" / "image.sh"


def run(quick: bool = False, timeout_s: float = 1800.0) -> dict[str, float]:
    """Build with deploy/image.sh and measure. ``quick`` changes nothing (one build is
    the measurement); it is accepted like every bench suite's."""
    t0 = time.monotonic()
    out = subprocess.run(
        [str(IMAGE_SH)], cwd=REPO, capture_output=True, text=True, timeout=timeout_s
    )
    build_s = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"deploy/image.sh failed: {out.stderr.strip()[-2000:]}")
    tag = out.stdout.strip().splitlines()[-1].split()[0]
    inspect = subprocess.run(
        ["podman", "image", "inspect", tag], capture_output=True, text=True, timeout=60
    )
    if inspect.returncode != 0:
        raise RuntimeError(f"podman image inspect {tag}: {inspect.stderr.strip()}")
    size = int(json.loads(inspect.stdout)[0]["Size"])
    return {"image_mb": round(size / 1e6, 1), "image_build_s": round(build_s, 1)}


def suite(quick: bool = False) -> Suite:
    """``run`` as a bench suite (``bench/results/image.{json,md}``, ``image_mb`` in
    summary.json)."""
    from bench.report import Suite

    f = run(quick=quick)
    s = Suite("image")
    s.add(
        "image_mb",
        "container image (deploy/Dockerfile), uncompressed",
        f["image_mb"],
        "MB",
        f"target <= 200: {'met' if f['image_mb'] <= 200 else 'NOT met'}; "
        f"this build {f['image_build_s']:g} s (cached base and layers unless empty)",
    )
    s.details.update(f)
    return s


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
