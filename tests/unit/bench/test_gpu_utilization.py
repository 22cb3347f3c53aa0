"""The GPU utilization sampler: parsing a sampling process's lines, the summary, CPU runs and empty runs."""

from __future__ import annotations

import sys
import time

from bench.embed_throughput import utilization_note
from bench.gpu_utilization import GpuUtilizationSampler, summarize_utilization

# Prints like `nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms=...`, then keeps running.
FAKE_SMI = "import sys, time\nfor v in ('97', '[N/A]', '100', '40', '99'):\n    print(v, flush=True)\ntime.sleep(60)\n"


def test_sampler_reads_numbers_until_its_block_ends_and_skips_other_lines() -> None:
    with GpuUtilizationSampler([sys.executable, "-c", FAKE_SMI]) as sampler:
        deadline = time.monotonic() + 10
        while len(sampler.samples) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert sampler.samples == [97.0, 100.0, 40.0, 99.0]
    assert sampler._process is not None
    assert sampler._process.poll() is not None  # the sampling process was stopped with the block
    summary = sampler.summary()
    assert summary == {"samples": 4, "mean_percent": 84.0, "p10_percent": 40.0, "share_at_least_95_percent": 0.75}
    assert utilization_note(summary) == "; GPU utilization mean 84%, p10 40% (4 samples)"


def test_cpu_device_and_missing_tool_sample_nothing() -> None:
    with GpuUtilizationSampler.for_device("cpu") as sampler:
        pass
    assert sampler.summary() is None
    assert utilization_note(None) == ""
    with GpuUtilizationSampler(["/nonexistent/nvidia-smi"]) as missing:
        pass
    assert missing.summary() == {"samples": 0}  # a GPU run that read nothing says so
    assert utilization_note(missing.summary()) == "; GPU utilization: no samples (nvidia-smi read nothing)"
    assert summarize_utilization([]) is None
