"""The simulation trace: an append-only list of ``(t, node, kind, fields)`` records.

It holds every ``Event`` a core emitted plus the engine's own records (kinds prefixed
``sim.``: crashes, restarts, link changes, partitions, drops). Serialization is canonical
(sorted keys, times as integer nanoseconds, no whitespace), so one seed gives one byte
string and one ``digest()``.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

TraceRecord: TypeAlias = tuple[float, str, str, dict[str, Any]]
"""``(t, node, kind, fields)``; ``node`` is ``"*"`` for network-wide records."""

GLOBAL = "*"


def _default(obj: object) -> Any:
    # Only types with one canonical form; anything else would make the trace depend on
    # object identity or hash seeds, so it is an error rather than a silent str().
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).hex()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=_sort_key)
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"trace field of type {type(obj).__name__} is not JSON-able: {obj!r}")


def _sort_key(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, default=_default)


def time_ns(t: float) -> int:
    """Virtual seconds to integer nanoseconds, the trace's time unit."""
    return round(t * 1e9)


def record_line(rec: TraceRecord) -> str:
    """One record as a canonical JSON line (without the newline)."""
    t, node, kind, fields = rec
    return json.dumps(
        {"t": time_ns(t), "node": node, "kind": kind, "fields": fields},
        sort_keys=True,
        separators=(",", ":"),
        default=_default,
        allow_nan=True,
    )


class Trace:
    """Records in the order they happened (time, then event sequence)."""

    __slots__ = ("records",)

    def __init__(self, records: Iterable[TraceRecord] = ()) -> None:
        self.records: list[TraceRecord] = list(records)

    def append(self, t: float, node: str, kind: str, fields: dict[str, Any]) -> None:
        self.records.append((t, node, kind, fields))

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[TraceRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> TraceRecord:
        return self.records[i]

    def select(self, kind: str | None = None, node: str | None = None) -> list[TraceRecord]:
        """Records matching ``kind`` and/or ``node`` (``None`` matches anything)."""
        return [
            r
            for r in self.records
            if (kind is None or r[2] == kind) and (node is None or r[1] == node)
        ]

    def lines(self) -> Iterator[str]:
        for rec in self.records:
            yield record_line(rec)

    def dumps(self) -> str:
        """The whole trace as JSON lines, each ending in a newline."""
        return "".join(line + "\n" for line in self.lines())

    def write(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for line in self.lines():
                f.write(line)
                f.write("\n")

    def digest(self) -> str:
        """sha256 hex of ``dumps()``, computed line by line (no giant string)."""
        h = hashlib.sha256()
        for line in self.lines():
            h.update(line.encode())
            h.update(b"\n")
        return h.hexdigest()

    @classmethod
    def loads(cls, text: str) -> Trace:
        """Parse ``dumps()`` output back (times return as float seconds)."""
        out = cls()
        for line in text.splitlines():
            if not line:
                continue
            obj = json.loads(line)
            out.records.append((obj["t"] / 1e9, obj["node"], obj["kind"], obj["fields"]))
        return out
