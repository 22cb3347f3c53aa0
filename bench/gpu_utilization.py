"""How busy the GPU was over a window: NVML's utilization samples, read by ``nvidia-smi`` in the background.

NVML's ``utilization.gpu`` is the share of each sample period in which at least one kernel ran. Beside a
throughput figure it says which side bounds it: a bulk run at ~100% is bound by the kernels themselves
(padding, kernel choice), one well below by the host (Python, the GIL, syncs, the event loop).

Used by ``bench.embed_throughput`` around its bulk (b) and loaded (d) windows. Without ``nvidia-smi`` (a CPU
run) the sampler records nothing and reports ``None``.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

#: Sample period in milliseconds (``nvidia-smi -lms``); NVML itself averages over ~1/6 s to 1 s by GPU.
SAMPLE_MS = 100
#: Utilization at or above which a sample counts as "busy" in the summary.
BUSY_PERCENT = 95


def nvidia_smi_command(gpu_id: str, sample_ms: int = SAMPLE_MS) -> list[str] | None:
    """The ``nvidia-smi`` call that prints one utilization percentage per line, or None without the tool.

    Args:
        gpu_id: What ``nvidia-smi --id`` takes: the GPU's UUID (unambiguous under ``CUDA_VISIBLE_DEVICES``),
            or an index in nvidia-smi's own order.
        sample_ms: Sample period.
    """
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    return [tool, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"--loop-ms={sample_ms}",
            f"--id={gpu_id}"]


def summarize_utilization(samples: Sequence[float]) -> dict[str, Any] | None:
    """Mean, 10th percentile and the busy share of utilization samples (percent); None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    return {
        "samples": len(ordered),
        "mean_percent": round(sum(ordered) / len(ordered), 1),
        "p10_percent": ordered[int(0.1 * (len(ordered) - 1))],
        f"share_at_least_{BUSY_PERCENT}_percent": round(sum(s >= BUSY_PERCENT for s in ordered) / len(ordered), 3),
    }


class GpuUtilizationSampler:
    """Context manager that samples utilization while its block runs.

    Args:
        command: A process that prints one number per line (default: :func:`nvidia_smi_command`); None
            samples nothing.
    """

    def __init__(self, command: Sequence[str] | None) -> None:
        self.command = list(command) if command is not None else None
        self.samples: list[float] = []
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @classmethod
    def for_device(cls, device: str) -> GpuUtilizationSampler:
        """A sampler for a torch device string (``cuda:1``), found by UUID: torch's index counts only the
        visible GPUs, in CUDA's order, which need not be nvidia-smi's. A CPU device samples nothing."""
        if not device.startswith("cuda"):
            return cls(None)
        import torch

        index = int(device.split(":", 1)[1]) if ":" in device else 0
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", ""))
        gpu_id = (uuid if uuid.startswith("GPU-") else f"GPU-{uuid}") if uuid else str(index)
        return cls(nvidia_smi_command(gpu_id))

    def __enter__(self) -> GpuUtilizationSampler:
        if self.command is None:
            return self
        try:
            self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             text=True)
        except OSError:
            return self
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,), daemon=True)
        self._reader.start()
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                continue  # "[N/A]" or a warning line

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def summary(self) -> dict[str, Any] | None:
        """The samples' summary; ``{"samples": 0}`` when a sampler ran but read nothing (look at
        ``nvidia-smi`` by hand then), None when there was nothing to sample (a CPU run)."""
        if self.command is None:
            return None
        return summarize_utilization(self.samples) or {"samples": 0}
