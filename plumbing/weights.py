"""Pretrained weights and the feature cache: not the method, the plumbing around it.

Where a backbone's weights come from (timm's hub, offline when the hub cannot be reached, or a local
.safetensors / torch file read without running code), how a file's keys are matched to a model, and the on-disk
cache of extracted features. features.py (`create_backbone`, `extract_features`) calls these in one line each;
a reader of the method need not open this file.
"""
import contextlib
import hashlib
import logging
import os
import re
import socket
import urllib.parse
import warnings

import numpy as np
import torch

STATE_DICT_NESTING = ("state_dict", "model", "state_dict_ema")  # where training checkpoints keep the weights


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be had (offline, or none exist for the model)."""


def head_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of a timm model's classifier, e.g. ("head.fc.",)."""
    head = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return tuple(h + "." for h in ([head] if isinstance(head, str) else head))


@contextlib.contextmanager
def hub_offline_if_unreachable():
    """Without a network, huggingface_hub retries each file for about 25 s before it
    gives up. When the hub's host name does not even resolve, switch the hub to
    offline mode for the call: cached weights still load, missing ones fail at once."""
    try:
        from huggingface_hub import constants
    except ImportError:  # timm then uses its plain download URL
        yield
        return
    if getattr(constants, "HF_HUB_OFFLINE", True):
        yield
        return
    try:
        socket.getaddrinfo(urllib.parse.urlparse(constants.ENDPOINT).hostname, 443)
        reachable = True
    except (OSError, UnicodeError, TypeError):
        reachable = False
    if reachable:
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def create_pretrained(name: str, **kwargs) -> torch.nn.Module:
    """timm's pretrained model from the hub, or one clear error saying how to do without."""
    import timm
    import timm.models

    if not timm.is_model_pretrained(name):
        raise WeightsUnavailableError(
            f"timm has no pretrained weights for {name}: pass a weights file with --weights PATH, "
            "or use --backbone pixels"
        )
    cfg = timm.models.get_pretrained_cfg(name)
    page = f"huggingface.co/{cfg.hf_hub_id}" if cfg is not None and cfg.hf_hub_id else f"timm's page for {name}"
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # offline, the hub logs a warning per retry
    try:
        with hub_offline_if_unreachable():
            return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as error:  # the hub's errors vary by version and transport
        raise WeightsUnavailableError(
            f"could not get pretrained weights for {name} ({type(error).__name__}: {first_line(error)}): "
            f"download model.safetensors from {page} once where there is a network and pass --weights PATH, "
            "or use --backbone pixels"
        ) from None
    finally:
        hub_log.setLevel(level)


def first_line(error: BaseException) -> str:
    """The first sentence of an error message (library errors run to many lines)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else "").split(". ")[0][:200]


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: .safetensors, or a torch file read with weights_only=True.

    A training checkpoint's weights are taken from its "state_dict", "model"
    or "state_dict_ema" entry; DistributedDataParallel's "module." prefix is
    stripped. Nothing in the file can run code: a torch file holding pickled
    objects is refused, whatever they are.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} not found (--weights PATH needs a local file)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses anyway
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as error:
        # torch's own message advises weights_only=False, i.e. running the file's code: never pass it on
        if "GLOBAL" in str(error):
            raise ValueError(
                f"{path} holds pickled objects, not plain tensors; it is refused because loading it could run code"
            ) from None
        reason = "damaged, or another format" if "weights_only" in str(error) else (
            f"{type(error).__name__}: {first_line(error)}")
        raise ValueError(f"{path} is not a readable .safetensors or torch weights file ({reason})") from None
    while isinstance(state, dict):  # unwrap {"state_dict": {...}, "epoch": 3} and the like
        nested = next((state[key] for key in STATE_DICT_NESTING if isinstance(state.get(key), dict)), None)
        if nested is None:
            break
        state = nested
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors (expected parameter name -> tensor)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_weights(model: torch.nn.Module, path: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a weights file into `model`: every parameter and buffer of the model
    must be in the file with its shape, and the file must hold nothing else,
    except keys starting with one of `ignore_prefixes` (e.g. torchvision's
    Inception file has "AuxLogits." weights that timm's inception_v3 lacks)."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(tuple(ignore_prefixes))}
    own = model.state_dict()
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    # BatchNorm's num_batches_tracked is a counter, not a weight: older files lack it and torch fills it in
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        raise ValueError(
            f"{path} does not fit {name}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(reshaped)} of another shape {reshaped[:3]} "
            f"(pass the weights file of {name} with --weights PATH)"
        )
    model.load_state_dict(state, strict=False)  # strict in effect: checked above, counters aside


def cache_name(images: np.ndarray, backbone: str, weights: str | None, device_type: str, dtype: torch.dtype) -> str:
    """File name for the features of these exact images under this backbone, these weights, this
    device type ("cuda", "cpu", ...) and this precision (bf16 features differ from fp32 ones)."""
    precision = str(dtype).removeprefix("torch.")
    digest = hashlib.sha256()
    digest.update(f"{images.shape}|{backbone}|{device_type}|{precision}|".encode())
    digest.update(np.ascontiguousarray(images).data)
    if weights is None or weights == "random":
        digest.update(f"|{weights or 'pretrained'}".encode())
    else:  # a local file: key on its content, not its name
        with open(weights, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', backbone)}-{device_type}-{precision}-{digest.hexdigest()[:24]}.npy"


def load_cached(path: str, n: int) -> np.ndarray | None:
    """Cached (n, D) float32 features, or None if the file is unreadable or does not fit (then it is redone)."""
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return features if features.dtype == np.float32 and features.ndim == 2 and len(features) == n else None
