"""Real model zoos for sweeps: timm (one representative per family) and torchvision classification.

No tests here; used by ``tools/sweep.py``. Models are built with random init (no download).

    import real_zoos as rz
    rz.import_timm()
    for name, family in rz.timm_representatives().items(): ...
    model = rz.build("timm", name); x = torch.randn(1, *rz.input_size("timm", name, model))

The PyPI torchvision wheel is a CUDA build whose C ops fail to register on CPU torch; its pure-Python
models still import if ``torch.library.register_fake`` is a no-op while ``import torchvision`` runs
(:func:`import_torchvision`). timm imports torchvision, so :func:`import_timm` does that first.
"""
from __future__ import annotations

import functools
import json
import os
import re
import warnings

import torch
import torch.nn as nn


@functools.lru_cache(None)
def import_torchvision():
    """``import torchvision`` with ``torch.library.register_fake`` made a no-op meanwhile (idempotent)."""
    orig = torch.library.register_fake

    def noop(*a, **k):  # decorator factory, or called on a function directly
        return a[0] if (a and callable(a[0]) and not isinstance(a[0], str)) else (lambda f: f)

    torch.library.register_fake = noop
    try:
        import torchvision
    finally:
        torch.library.register_fake = orig
    return torchvision


@functools.lru_cache(None)
def import_timm():
    import_torchvision()
    import timm
    return timm


# --- timm: one cheap representative per family ------------------------------------------------------
# A family is the module that registers the model (timm.models.resnet, timm.models.vision_transformer, ...).
# Choosing the smallest variant by building each model is too slow (1300+ models), so:
#   1. rank the family's names by the first size keyword they contain (SIZE_WORDS order, earlier =
#      smaller), then by name length, then alphabetically; ``test_*`` models (synthetic configs) are skipped;
#   2. build the best TOP_K of them on the meta device (no memory, ~0.2 s each) and take the one with the
#      fewest parameters x input pixels (a FLOPs proxy); a model that fails on meta counts as infinite.
# Step 2 takes 1-2 minutes for all families, so the choice is cached per timm version in
# ~/.cache/fxprune/timm_representatives-<version>.json (delete it to recompute).
SIZE_WORDS = ["pico", "nano", "atto", "femto", "xxs", "xxtiny", "xx_small", "xtiny", "tiny", "x_small", "xs",
              "mini", "small", "_s0", "_s1", "_m0", "_b0", "_t0", "002", "035", "050", "18", "_s", "_t", "100"]
TOP_K = 6


def _size_rank(name: str):
    hits = [i for i, w in enumerate(SIZE_WORDS) if w in name]
    return (min(hits) if hits else len(SIZE_WORDS), len(name), name)


def timm_families() -> dict[str, list[str]]:
    """{family module (short name, e.g. "resnet"): [model names]} over ``timm.list_models()``."""
    timm = import_timm()
    from timm.models._registry import model_entrypoint
    fams: dict[str, list[str]] = {}
    for name in timm.list_models():
        fams.setdefault(model_entrypoint(name).__module__.rpartition(".")[2], []).append(name)
    return fams


def _meta_cost(name: str) -> float:
    timm = import_timm()
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
        c, h, w = model.pretrained_cfg["input_size"]
        return sum(p.numel() for p in model.parameters()) * h * w
    except Exception:
        return float("inf")


@functools.lru_cache(None)
def timm_representatives() -> dict[str, str]:
    """{model name: family}, one model per timm family, deterministic (see the comment above)."""
    timm = import_timm()
    cache = os.path.join(os.path.expanduser("~"), ".cache", "fxprune", f"timm_representatives-{timm.__version__}.json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    out = {}
    for fam, names in sorted(timm_families().items()):
        cands = sorted((n for n in names if not n.startswith("test_")), key=_size_rank) or sorted(names)
        cands = cands[:TOP_K]
        costs = {n: _meta_cost(n) for n in cands} if len(cands) > 1 else {cands[0]: 0}
        out[min(cands, key=lambda n: (costs[n], cands.index(n)))] = fam
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "w") as f:
        json.dump(out, f, indent=0)
    return out


# --- torchvision classification ---------------------------------------------------------------------
def torchvision_models() -> dict[str, str]:
    """{model name: family (builder's module, e.g. "resnet")} for torchvision's classification models."""
    tv = import_torchvision()
    names = tv.models.list_models(module=tv.models)
    return {n: tv.models.get_model_builder(n).__module__.rpartition(".")[2] for n in names}


# --- building and inputs ----------------------------------------------------------------------------
def build(source: str, name: str) -> torch.nn.Module:
    """A random-init model in eval mode (``source`` is "timm" or "torchvision")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if source == "timm":
            return import_timm().create_model(name, pretrained=False).eval()
        return import_torchvision().models.get_model(name, weights=None).eval()


def input_size(source: str, name: str, model: torch.nn.Module | None = None) -> tuple[int, int, int]:
    """(C, H, W) the model is made for: timm's pretrained_cfg / resolve_data_config; for torchvision the
    model's own ``image_size`` (ViT, fixed at build) or else the crop size of its first weights' transforms."""
    if source == "timm":
        timm = import_timm()
        if model is not None and getattr(model, "pretrained_cfg", None):
            return tuple(model.pretrained_cfg["input_size"])
        return tuple(timm.data.resolve_data_config({}, model=model or build(source, name))["input_size"])
    if model is not None and isinstance(getattr(model, "image_size", None), int):
        return (3, model.image_size, model.image_size)
    tv = import_torchvision()
    weights = list(tv.models.get_model_weights(name))[0]
    crop = weights.transforms().crop_size
    return (3, crop[0], crop[-1])


def fresh_inputs(inputs, seed: int = 1234) -> tuple:
    """Random inputs with the shapes and dtypes of ``inputs`` but other values."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(t.shape, generator=g, dtype=t.dtype) if t.dtype.is_floating_point
                 else torch.randint(0, int(t.max()) + 1, t.shape, generator=g, dtype=t.dtype) for t in inputs)


def short_error(e: BaseException, n: int = 300) -> str:
    """``Type: first line of the message`` (clipped, site-packages paths shortened)."""
    first = (str(e).strip().splitlines() or [""])[0]
    first = re.sub(r"\s+", " ", re.sub(r"/\S*/site-packages/", "", first))
    return f"{type(e).__name__}: {first[:n]}"


def perturbed(model: nn.Module) -> nn.Module:
    """Constant parameters (zero-initialised gains and biases, unit norm weights) get random noise, and
    BatchNorm statistics random values, so that no comparison is vacuous."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(m.running_var.shape, generator=g))
    return model
