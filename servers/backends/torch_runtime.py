"""Pieces every torch backend shares: per-thread tokenizers, per-lane CUDA streams, padding."""

from __future__ import annotations

import contextlib
import copy
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
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

    def encode_ids(self, texts: list[str], *, add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids per text: what ``tokenizer(texts, add_special_tokens=...)["input_ids"]`` returns.

        A fast tokenizer is called through its Rust backend's ``encode_batch_fast`` (no character offsets),
        and only the ids are read back, where the Hugging Face call computes offsets and then builds a dict
        per text in Python (attention mask, encodings) while holding the GIL. ``bench.tokenize_gil``: about
        a quarter less wall time per batch and half the Python time around the Rust call. The thread's
        backend is put in the state that call would put it in first: no truncation, no padding (an earlier
        truncating call leaves them set), and the tokenizer's ``split_special_tokens``.

        Args:
            texts: n strings.
            add_special_tokens: as in the Hugging Face call (the post-processor's BOS/EOS/CLS/SEP).

        Returns:
            n lists of token ids.
        """
        tok = self.get()
        backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
        if backend is None:
            return [list(ids) for ids in tok(texts, add_special_tokens=add_special_tokens)["input_ids"]]
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        split = bool(getattr(tok, "split_special_tokens", False))
        if backend.encode_special_tokens != split:
            backend.encode_special_tokens = split
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        return [encoding.ids for encoding in encode(texts, add_special_tokens=add_special_tokens)]


#: Decoder layers a bulk thread may launch ahead of the GPU (enough to keep it busy, few enough that a
#: query's kernels wait behind little bulk work).
BULK_LAYERS_AHEAD = 4
#: Whether a priority-lane forward pauses bulk layer launches until its result is on the host.
PRIORITY_PAUSES_BULK = True


class PriorityGate:
    """Keeps the bulk lane from launching work while a priority-lane forward runs.

    The two lanes run in two threads over one model. Left alone, the bulk thread keeps launching kernels
    and holding the GIL, and a query's forward waits behind it. Every decoder layer of the model gets a
    pre-hook that, in a bulk thread, waits here while a priority forward is in flight (the priority lane
    holds the gate until its result is on the host), so a query pays for at most the bulk layers already
    queued on the device. With ``max_layers_ahead`` (CUDA) a bulk thread also never runs more than that many
    layers ahead of the GPU: launching is asynchronous, and an unbounded queue (a whole pipelined batch)
    would sit in front of every query's kernels.
    """

    def __init__(self, max_layers_ahead: int | None = None, pause_bulk: bool = True) -> None:
        self._pause_bulk = pause_bulk
        self._lock = threading.Lock()
        self._active = 0
        self._idle = threading.Event()
        self._idle.set()
        self._local = threading.local()
        self._max_ahead = max_layers_ahead

    @contextlib.contextmanager
    def lane(self, lane: str) -> Iterator[None]:
        """Mark the calling thread's forward as ``priority`` (blocks bulk layers) or ``bulk`` (yields)."""
        if lane != "priority" or not self._pause_bulk:
            self._local.bulk = lane != "priority"
            try:
                yield
            finally:
                self._local.bulk = False
            return
        with self._lock:
            self._active += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._idle.set()

    def checkpoint(self, *_: Any) -> None:
        """Layer pre-hook: a bulk thread waits here while a priority forward runs."""
        if torch.compiler.is_compiling():
            return  # traced into a compiled graph: the gate only applies to eager forwards
        if not getattr(self._local, "bulk", False):
            return
        if not self._idle.is_set():
            self._idle.wait()
        if self._max_ahead is not None:
            events: deque[Any] = self._local.__dict__.setdefault("events", deque())
            event = torch.cuda.Event()
            event.record()  # on the bulk stream: this layer's launch point
            events.append(event)
            while len(events) > self._max_ahead:
                events.popleft().synchronize()  # releases the GIL while the GPU catches up

    def watch(self, model: Any) -> int:
        """Install :meth:`checkpoint` before every block of the model's longest layer stack.

        Returns:
            Number of hooked layers (0 when the model has no ``ModuleList`` of layers).
        """
        stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
        if not stacks:
            return 0
        layers = max(stacks, key=len)
        for layer in layers:
            layer.register_forward_pre_hook(self.checkpoint)
        return len(layers)


class LaneStreams:
    """Per-lane execution context: a CUDA stream per scheduler lane, and the :class:`PriorityGate`.

    The priority lane's stream has the higher scheduling priority, so its kernels overtake queued bulk
    kernels on the GPU. On CPU there are no streams; the gate still applies.

    Args:
        placement: Where the model runs.
        model: The torch module whose layers get the gate's checkpoints (None: no gating).
    """

    def __init__(self, placement: Placement, model: Any | None = None) -> None:
        self._streams: dict[str, Any] = {}
        cuda = placement.device.type == "cuda"
        self.gate = PriorityGate(BULK_LAYERS_AHEAD if cuda else None, PRIORITY_PAUSES_BULK)
        if model is not None:
            self.gate.watch(model)
        if placement.device.type == "cuda":
            with torch.cuda.device(placement.device):
                low, high = torch.cuda.Stream.priority_range()  # type: ignore[call-arg]
                self._streams = {
                    "priority": torch.cuda.Stream(device=placement.device, priority=high),
                    "bulk": torch.cuda.Stream(device=placement.device, priority=low),
                }

    @contextlib.contextmanager
    def hold(self, lane: str) -> Iterator[None]:
        """Hold the lane's gate around a whole forward *and* its result (``forward`` = launch + wait), so a
        priority forward keeps bulk layers paused until its output is on the host, not only while it is
        being launched."""
        with self.gate.lane(lane):
            yield

    @contextlib.contextmanager
    def use(self, lane: str) -> Iterator[None]:
        stream = self._streams.get(lane if lane == "priority" else "bulk")
        with self.gate.lane(lane):
            if stream is None:
                yield
                return
            with torch.cuda.stream(stream):
                yield


class HostResult:
    """A device tensor being copied to host memory; :meth:`result` waits for the copy only.

    Created inside the lane's stream context, so the copy and its event are ordered after the forward on
    that stream: the caller can launch the next batch before it waits for this one.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self._event: Any = None
        if tensor.is_cuda:
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor.detach()

    def result(self) -> np.ndarray:
        """The tensor as a numpy array (blocks until the device has produced and copied it)."""
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()


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


def is_causal(model: Any) -> bool:
    """Whether every attention module of ``model`` that says so is causal (right pads then never reach a
    real token, so right padding without a mask is exact)."""
    return all(bool(m.is_causal) for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool))


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


def model_max_length(config: Any, tokenizer: Any | None, requested: int) -> int:
    """``requested`` capped by the model's positions and, when given, the tokenizer's own limit.

    Args:
        config: The (text) config; its ``max_position_embeddings`` bounds the length when set.
        tokenizer: Its ``model_max_length`` bounds it too when it is a real limit (not the "unset" sentinel).
        requested: The server's ``--max-length``.
    """
    limit = requested
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limit = min(limit, int(positions))
    tok_max = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limit = min(limit, tok_max)
    return limit
