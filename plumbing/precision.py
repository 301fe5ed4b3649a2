"""Running the network: mixed precision where the hardware has it (train.py and sampling).

Not the method: which autocast dtype a device runs (--precision), and the autocast context itself.
"""
import torch


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """Does this device run bf16 matrix maths natively? (A CUDA GPU of compute capability 8.0 or newer, whose
    bf16 is not emulated; a CPU with AVX512-BF16 or AMX.)"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """--precision -> the autocast dtype (None: plain fp32).

    auto: bf16 where native_bf16; else fp16 on a CUDA GPU with tensor cores (compute capability 7.0+,
    e.g. V100, T4: training then scales the loss, train.py's GradScaler); else fp32.
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown --precision {name!r}; choose {', '.join(PRECISIONS)}")
    if name == "auto":
        if native_bf16(device):
            return torch.bfloat16
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 7:
            return torch.float16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 or fp16 autocast for the network's matrix maths; weights, loss and sampler stay fp32."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def make_scaler(device: torch.device, precision: torch.dtype, state: dict | None) -> torch.amp.GradScaler:
    """fp16's loss scaler (disabled in other precisions), continuing from a checkpoint's `scaler` state on --resume.

    The scale and its growth tracker decide which fp16 steps are skipped, so a
    resume that restarted them would not replay the run that never stopped.
    """
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)
    return scaler
