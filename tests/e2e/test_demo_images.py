"""The image part of `make demo`, run as a user runs it, with a tiny random-weight GME-Qwen2-VL built here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.mm_fixtures import MM_MAX_PIXELS, MM_MIN_PIXELS
from tests.support.serve import REPO_ROOT

IMAGE_NAMES = {"red-circle.png", "blue-square.png", "green-triangle.png", "orange-stripes.png", "purple-cross.png"}


def test_demo_image_part_prints_ranked_image_hits(tiny_gme: Path) -> None:
    env = {**os.environ, "RAG_DEMO_MM_MODEL": str(tiny_gme),
           # Small pixel range: the toy model on CPU, a few image tokens each (read by the mm server).
           "RAG_SERVE_MIN_PIXELS": str(MM_MIN_PIXELS), "RAG_SERVE_MAX_PIXELS": str(MM_MAX_PIXELS)}
    proc = subprocess.run(
        [sys.executable, "-m", "demo.run", "--query", "Which GPUs cannot use bfloat16?",
         "--image-query", "a red circle", "--image-query", "stripes"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    text_part, _, image_part = out.partition("\nImage Q: ")
    first_text_hits = [line.split()[2] for line in text_part.splitlines() if line.strip().startswith("1. ")]
    assert first_text_hits == ["01-pascal-cards.md"], out
    assert "image part skipped" not in out
    blocks = ("Image Q: " + image_part).split("Image Q: ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["a red circle", "stripes"], out
    for block in blocks:
        assert re.search(r"\[embed [\d.]+ ms  search [\d.]+ ms", block), block  # per-stage timings
        hits = [line.split() for line in block.splitlines() if re.match(r"\s+\d+\. ", line)]
        assert [h[0] for h in hits] == ["1.", "2.", "3."], block
        assert all(Path(h[2]).name in IMAGE_NAMES for h in hits), block
        scores = [float(h[1]) for h in hits]
        assert scores == sorted(scores, reverse=True), block
    # The images went into the same Milvus Lite collection as the documents, in its image field.
    assert "indexed 5 drawn images" in out, out
    assert re.search(r"12 rows with a text vector, 5 with an image vector", out), out
    assert out.rstrip().endswith("servers stopped; done.")
