"""fxprune: exact structured pruning of PyTorch models as a torch.fx pass.

    pruned = fxprune.prune(model, example_inputs=(x,), sparsity=0.5)
    report = pruned.meta["fxprune"]
"""
from . import rules
from .capture import CaptureError
from .dump import plot_widths, to_networkx
from .pipeline import InexactError
from .saving import load, save
# last: ``fxprune.dump`` is the function (the package fxprune.dump stays importable by its full name)
from .api import (PrunePass, apply_masks, dump, eliminate_dead_channels, find_patterns, measure_latency, prune,
                  update_masks)

__all__ = ["prune", "eliminate_dead_channels", "apply_masks", "update_masks", "find_patterns", "measure_latency",
           "dump", "plot_widths", "to_networkx", "save", "load", "PrunePass", "CaptureError", "InexactError", "rules"]
