"""Pretrained ResNet18 weights (``--pretrained auto|yes|no``, ``--weights FILE``).

The post calls ``timm.create_model('resnet18', pretrained=True, num_classes=10)``: timm fetches
``timm/resnet18.a1_in1k`` from the Hugging Face hub and drops the 1000-class head. Here the same weights are
fetched with huggingface_hub (so a machine without network is detected in seconds, not after the hub's retries)
and loaded with ``weights_only`` semantics: safetensors files cannot run code, and other files go through
``torch.load(weights_only=True)``. Frozen-backbone compute is the same with or without them; accuracy is not, so
every result records which weights it used.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from devicebench.errors import DataError, UsageError

PRETRAINED_MODES = ("auto", "yes", "no")
HUB_REPO = "timm/resnet18.a1_in1k"
HUB_FILE = "model.safetensors"
HUB_URL = "https://huggingface.co"
HEAD_PREFIX = "fc."  # the classifier: replaced by a 10-class head, never loaded


def locate(mode: str, weights_file: Path | None, *, probe_timeout_s: float = 5.0) -> tuple[Path | None, str]:
    """Find the weights to use; return (path or None, label recorded in results as ``pretrained``)."""
    if mode not in PRETRAINED_MODES:
        raise UsageError(f"--pretrained {mode!r}: choose one of {', '.join(PRETRAINED_MODES)}")
    if mode == "no":
        return None, "none"
    if weights_file is not None:
        if not Path(weights_file).exists():
            raise UsageError(f"--weights {weights_file}: no such file")
        if not Path(weights_file).is_file():
            raise UsageError(f"--weights {weights_file}: not a regular file (a folder, device or pipe); give the "
                             f"{HUB_FILE} file itself")
        return Path(weights_file), f"file:{Path(weights_file).name}"
    try:
        return _from_hub(probe_timeout_s), f"hub:{HUB_REPO}"
    except DataError as error:
        if mode == "yes":
            raise
        print(f"devicebench: resnet18 weights unavailable, using random initialisation "
              f"(--pretrained yes to insist): {error}", file=sys.stderr)
        return None, "none"


def _from_hub(probe_timeout_s: float) -> Path:
    import huggingface_hub
    import requests

    cached = huggingface_hub.try_to_load_from_cache(HUB_REPO, HUB_FILE)
    if isinstance(cached, str):
        return Path(cached)
    hint = (f"download {HUB_URL}/{HUB_REPO}/resolve/main/{HUB_FILE} elsewhere and pass --weights FILE, "
            f"or run with --pretrained no")
    try:  # one quick probe: the hub client itself retries for ~25 s on a machine without network
        requests.head(HUB_URL, timeout=probe_timeout_s)
    except requests.exceptions.RequestException as error:
        raise DataError(f"cannot reach {HUB_URL} ({type(error).__name__}); {hint}") from error
    try:
        return Path(huggingface_hub.hf_hub_download(HUB_REPO, HUB_FILE))
    except Exception as error:  # the hub client raises many types; all mean "not available"
        raise DataError(f"downloading {HUB_REPO}/{HUB_FILE} failed ({error}); {hint}") from error


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors only: safetensors, or a torch checkpoint through ``weights_only=True`` (no code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(f"{path} is not a readable weights file ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint rather than a bare state dict
    if not isinstance(state, dict):
        raise DataError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def load_backbone(model: nn.Module, path: Path) -> None:
    """Load every weight except the classifier head; refuse a file that does not fit the model."""
    state = {key: value for key, value in read_state_dict(path).items() if not key.startswith(HEAD_PREFIX)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatch
        raise DataError(f"{path} does not fit timm's resnet18: {error}") from error
    missing = [key for key in result.missing_keys if not key.startswith(HEAD_PREFIX)]
    if missing or result.unexpected_keys:
        raise DataError(f"{path} does not fit timm's resnet18: missing {missing[:5]}, "
                        f"unexpected {result.unexpected_keys[:5]}")
