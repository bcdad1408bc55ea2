"""An optional stage timer: exclusive wall time per pipeline stage, off unless a caller turns it on.

The pipeline marks its stages with ``with stage("rewrite"): ...``; while no :func:`record` is active
that costs one attribute check. Nested stages count once: a stage's time excludes the stages inside
it (``analysis`` excludes the ``shapes`` of each node it propagates). ``tools/profile_prune.py``
prints the table.

Example::

    with timing.record() as times:
        fxprune.prune(model, (x,), sparsity=0.5)
    times        # {"capture": 0.041, "shapes": 0.12, "analysis": 0.08, ...} in seconds

The bottom of the package: it imports nothing of fxprune.
"""
from __future__ import annotations

import contextlib
import time

_active: dict[str, float] | None = None
_stack: list["stage"] = []


class stage:
    """Context manager: time spent inside, minus nested stages, is added to ``name``."""

    __slots__ = ("name", "start", "inner")

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        if _active is not None:
            self.inner = 0.0
            _stack.append(self)
            self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if _active is not None and _stack and _stack[-1] is self:
            elapsed = time.perf_counter() - self.start
            _stack.pop()
            _active[self.name] = _active.get(self.name, 0.0) + elapsed - self.inner
            if _stack:
                _stack[-1].inner += elapsed
        return False


@contextlib.contextmanager
def record():
    """Collect stage times into the dict yielded (seconds per stage name)."""
    global _active
    previous, _active = _active, {}
    times = _active
    try:
        yield times
    finally:
        _active = previous
        _stack.clear()
