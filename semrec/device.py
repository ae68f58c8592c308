"""Where tensors live and in what precision: the device named by a setting, and bf16 autocast on CUDA."""

from contextlib import nullcontext

import torch

from semrec.errors import StageFailed


def resolve_device(setting: str) -> torch.device:
    """"auto" -> the first CUDA device if there is one, else the CPU; anything else as torch names it."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as e:
        raise StageFailed(f"unknown device {setting!r}", "use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageFailed(f"device {setting!r} asked for, but no CUDA GPU is visible", "set the device to auto or cpu")
    return device


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; nothing on the CPU, where bf16 matmuls are slower than float32."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
