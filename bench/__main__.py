"""``make bench``: run every suite, write ``bench/results/<suite>.{json,md}`` and the flat
``bench/results/summary.json``, and print the figures.

``python -m bench [suite ...] [--quick]``; suites: channel, sim, sim_lossy (the mesh
under loss and jitter: ``python -m bench sim_lossy`` runs just that), netns (raw veth and
TUN baselines and the agent in network namespaces; needs root), control (the control
plane under load: needs PostgreSQL and Redis on 127.0.0.1; wrk is used when installed),
drill (backup/restore drill on PostgreSQL: rto_s, rpo_s), image (the container image built
with podman: image_mb).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import time

from bench.report import RESULTS, Suite, update_readme, update_summary, write_suite

SUITES = ("channel", "sim", "sim_lossy", "netns", "control", "drill", "image")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", default=[], help=f"any of {SUITES} (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args(argv)
    # Many small long-lived objects (routes, sessions): the default collector thresholds
    # spend seconds rescanning them in the big simulations.
    gc.set_threshold(100_000, 50, 100)
    done: list[Suite] = []
    for name in args.suites or SUITES:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        # A module whose run() returns plain figures offers suite() for the report.
        suite: Suite = getattr(module, "suite", module.run)(quick=args.quick)
        suite.details["wall_seconds"] = round(time.perf_counter() - t0, 1)
        write_suite(suite)
        done.append(suite)
    summary = update_summary(done)
    if not args.quick:  # a smoke run never replaces the published figures
        update_readme("make bench")
    print(f"\nwrote {RESULTS}/summary.json:")
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
