"""Pausing the cyclic garbage collector around a pass (see gc_paused)."""
from __future__ import annotations

import functools
import gc


def gc_paused(fn):
    """Run ``fn`` with Python's cyclic garbage collector paused, then collect the young generation.

    The pass allocates many small long-lived objects (fx nodes, fake tensors, channel units), which
    would trigger a full collection in the middle of it: that scans every object of the process
    (about 0.15 s with torch imported) and finds nothing of ours to free. Collecting the young
    generation afterwards frees the pass's own cyclic garbage (discarded graph copies) at once."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()
            gc.collect(0)
    return wrapper
