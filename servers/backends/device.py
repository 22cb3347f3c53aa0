"""Device, dtype and attention selection from the hardware's compute capability.

* CPU: float32, SDPA.
* CUDA compute capability < 8.0 (Pascal, Volta, Turing): float16; SDPA (or eager); never bfloat16 or
  FlashAttention-2, which those cards cannot run.
* CUDA compute capability >= 8.0: bfloat16, SDPA (FlashAttention-2 only when asked for and installed).

``--dtype`` and ``--attention`` override the choice; an impossible override is refused with a clear error.

On CUDA, SDPA never uses its cuDNN backend (flash / memory-efficient kernels instead): cuDNN attention builds
an execution plan for every new (batch, length) shape, and a server sees a new shape in nearly every batch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_ATTENTIONS = ("sdpa", "eager", "flash_attention_2")


@dataclass(frozen=True)
class Placement:
    """Where and how a model runs."""

    device: torch.device
    dtype: torch.dtype
    attention: str
    compute_capability: tuple[int, int] | None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks ``cuda:0`` when a GPU is visible, else the CPU."""
    if requested == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but no CUDA GPU is visible; use --device cpu")
    return device


def use_shape_stable_sdpa() -> None:
    """Turn off SDPA's cuDNN backend for this process (flash and memory-efficient attention remain).

    The bulk lane's py-spy profile on the H200 (2026-12-02) had ~60% of the model thread inside one attention
    op of the compiled layer: host time building a plan per new input shape, while the GPU idled. The flash
    and memory-efficient kernels take any shape at no host cost; Pascal cards use the latter.
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


def choose_placement(device: str = "auto", dtype: str = "auto", attention: str = "auto") -> Placement:
    """Pick dtype and attention for ``device`` following the hardware rules above."""
    dev = resolve_device(device)
    capability: tuple[int, int] | None = None
    if dev.type == "cuda":
        capability = torch.cuda.get_device_capability(dev)
    modern = capability is not None and capability >= (8, 0)

    if dtype == "auto":
        chosen_dtype = torch.float32 if dev.type != "cuda" else (torch.bfloat16 if modern else torch.float16)
    else:
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of auto, float32, float16, bfloat16")
        chosen_dtype = _DTYPES[dtype.lower()]
        if chosen_dtype == torch.bfloat16 and dev.type == "cuda" and not modern:
            raise ValueError(
                f"bfloat16 needs compute capability >= 8.0; this GPU has {capability}: use --dtype float16"
            )

    if attention == "auto":
        chosen_attention = "sdpa"
    else:
        if attention not in _ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; use one of auto, {', '.join(_ATTENTIONS)}")
        if attention == "flash_attention_2":
            if not modern:
                raise ValueError("FlashAttention-2 needs a GPU with compute capability >= 8.0; use sdpa or eager")
            if importlib.util.find_spec("flash_attn") is None:
                raise ValueError("attention flash_attention_2 requested but the flash-attn package is not installed")
            if chosen_dtype == torch.float32:
                raise ValueError("FlashAttention-2 runs in float16/bfloat16 only")
        chosen_attention = attention
    if dev.type == "cuda" and chosen_attention == "sdpa":
        use_shape_stable_sdpa()
    return Placement(device=dev, dtype=chosen_dtype, attention=chosen_attention, compute_capability=capability)
