"""fxprune: exact structured pruning of PyTorch models as a torch.fx pass.

    pruned = fxprune.prune(model, example_inputs=(x,), sparsity=0.5)
    report = pruned.meta["fxprune"]
"""
from . import rules
from .api import PrunePass, eliminate_dead_channels, prune
from .capture import CaptureError
from .dump import dump, load, plot_widths, save, to_networkx
from .masked import apply_masks, update_masks
from .measure import measure_latency
from .patterns import find_patterns

__all__ = ["prune", "eliminate_dead_channels", "apply_masks", "update_masks", "find_patterns", "measure_latency", "PrunePass", "CaptureError", "rules"]
