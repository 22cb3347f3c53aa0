"""Pieces every torch backend shares: per-thread tokenizers, per-lane CUDA streams, padding."""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from servers.backends.device import Placement


class ThreadLocalTokenizer:
    """One deep copy of a Hugging Face tokenizer per thread.

    Fast tokenizers raise "Already borrowed" when two threads use one instance with different
    truncation/padding settings; tokenization runs on a small thread pool, so each thread gets its own.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.prototype = tokenizer
        self._local = threading.local()

    def get(self) -> Any:
        tok = getattr(self._local, "tokenizer", None)
        if tok is None:
            tok = copy.deepcopy(self.prototype)
            self._local.tokenizer = tok
        return tok


class LaneStreams:
    """A CUDA stream per scheduler lane; the priority lane's stream has the higher scheduling priority.

    On CPU every context is a no-op.
    """

    def __init__(self, placement: Placement) -> None:
        self._streams: dict[str, Any] = {}
        if placement.device.type == "cuda":
            with torch.cuda.device(placement.device):
                low, high = torch.cuda.Stream.priority_range()  # type: ignore[call-arg]
                self._streams = {
                    "priority": torch.cuda.Stream(device=placement.device, priority=high),
                    "bulk": torch.cuda.Stream(device=placement.device, priority=low),
                }

    @contextlib.contextmanager
    def use(self, lane: str) -> Iterator[None]:
        stream = self._streams.get(lane)
        if stream is None:
            yield
            return
        with torch.cuda.stream(stream):
            yield


def pad_batch(
    batch: Sequence[Sequence[int]], pad_id: int, side: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists to one (n, L) tensor and its attention mask (1 = real token).

    Args:
        batch: n lists of token ids.
        pad_id: Id written into padding positions (masked out, so its value does not matter).
        side: ``left`` or ``right``.
        device: Where the tensors go.

    Returns:
        input_ids (n, L) int64 and attention_mask (n, L) int64.
    """
    longest = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, seq in enumerate(batch):
        n = len(seq)
        if side == "left":
            ids[row, longest - n :] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, longest - n :] = 1
        else:
            ids[row, :n] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, :n] = 1
    non_blocking = device.type == "cuda"
    if non_blocking:
        ids, mask = ids.pin_memory(), mask.pin_memory()
    return ids.to(device, non_blocking=non_blocking), mask.to(device, non_blocking=non_blocking)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (so left padding does not shift RoPE)."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, found from the mask (never by comparing ids: pad == EOS)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask).argmax(dim=1)


def model_load_kwargs(placement: Placement) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` that apply the chosen dtype and attention."""
    return {"dtype": placement.dtype, "attn_implementation": placement.attention}
