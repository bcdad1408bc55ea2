"""Save a pruned GraphModule with its report, and load it in any process."""
from __future__ import annotations

import warnings

import torch
import torch.fx as fx
import torch.nn as nn

_FORMAT = 1


def save(gm: nn.Module, path) -> None:
    """Save a pruned GraphModule (and its report) so that :func:`load` returns it, runnable, in
    another process. A GraphModule pickles its own code, so the file needs neither the model's source
    file nor the class that was traced; only the classes of the leaf modules it holds (torch.nn's,
    fxprune's) must be importable where it is loaded.

    Example::

        fxprune.save(pruned, "pruned.pt")
        model = fxprune.load("pruned.pt")          # in any process
    """
    if not isinstance(gm, nn.Module):
        raise TypeError(f"save expects an nn.Module (a pruned GraphModule), got {type(gm).__name__}")
    unimportable = set()
    for m in gm.modules():
        mod = type(m).__module__
        if mod == "__main__" or mod.startswith("_fxprune_model_"):
            unimportable.add(f"{type(m).__name__} (defined in {'the main script' if mod == '__main__' else 'the model file'})")
    if isinstance(gm, fx.GraphModule):
        try:
            _, (_, import_block) = gm.__reduce__()
        except Exception:
            import_block = ""
        for line in import_block.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("from", "import"):
                mod = words[1]
                if mod == "__main__" or mod.startswith("_fxprune_model_"):
                    unimportable.add(f"{' '.join(words[3:]) or mod} (a function the graph calls)")
    if unimportable:
        warnings.warn("fxprune.save: the saved model refers to " + ", ".join(sorted(unimportable))
                      + ", which another process cannot import; import it before fxprune.load, or move it "
                      "into an importable module", stacklevel=2)
    if isinstance(gm, fx.GraphModule):
        # annotations kept as strings (a model file with `from __future__ import annotations`) cannot be
        # pickled by GraphModule (its import block needs objects): they are only annotations, drop them
        stringly = [n for n in gm.graph.nodes if isinstance(n.type, str)]
        for n in stringly:
            n.type = None
        if stringly:
            gm.recompile()
    report = getattr(gm, "meta", {}).get("fxprune") if isinstance(gm, fx.GraphModule) else None
    torch.save({"fxprune_format": _FORMAT, "module": gm, "report": report}, str(path))


def load(path, map_location="cpu") -> nn.Module:
    """Load a model saved by :func:`save` (or ``torch.save`` of a module): a runnable GraphModule with
    its report in ``meta["fxprune"]``. Only load files you trust: like ``torch.load(weights_only=False)``,
    this runs the pickled code."""
    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=False)
    except (ModuleNotFoundError, AttributeError) as e:
        raise RuntimeError(f"fxprune.load: {path} refers to code this process cannot import ({e}); "
                           "import the module that defines it first") from e
    if isinstance(obj, dict) and "fxprune_format" in obj:
        gm = obj["module"]
        if obj.get("report") is not None and isinstance(gm, fx.GraphModule):
            gm.meta["fxprune"] = obj["report"]
        return gm
    if isinstance(obj, nn.Module):
        return obj
    raise ValueError(f"fxprune.load: {path} holds a {type(obj).__name__}, not a saved model")
