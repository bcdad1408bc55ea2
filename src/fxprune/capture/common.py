"""What the capture frontends share: the error they raise, and where in the user's code it arose."""
from __future__ import annotations

import os
import traceback

import torch


class CaptureError(RuntimeError):
    """The model could not be captured as an fx graph."""


_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.dirname(__file__))


def user_frame(exc: BaseException) -> str:
    """The innermost frame of the traceback that is in the user's code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith((_TORCH_DIR, _OWN_DIR)) and "<eval_with_key>" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} in {f.name}: `{(f.line or '').strip()}`"
