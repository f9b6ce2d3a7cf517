"""Metrics, tracing and logs for both sides (see docs/observability.md).

The metric objects live in :mod:`x0tta6bl4.observability.metrics` (prometheus-client).
A node records into them only once :func:`enable_metrics` was called, which the agent
does when it serves ``/metrics``: a node that is not scraped never imports
prometheus-client and its exposition stack (1.6 MB resident, measured). The control plane
imports the module directly.
"""

from __future__ import annotations

from types import ModuleType

_metrics: ModuleType | None = None


def enable_metrics() -> ModuleType:
    """Load the metric objects and record into them from now on; returns the module."""
    global _metrics
    if _metrics is None:
        from x0tta6bl4.observability import metrics as loaded

        _metrics = loaded
    return _metrics


def recorder() -> ModuleType | None:
    """The metrics module if recording is on (see :func:`enable_metrics`), else None."""
    return _metrics


__all__ = ["enable_metrics", "recorder"]
