"""Session fixtures of the multimodal embedding server (issue 4): a tiny random-weight GME-Qwen2-VL."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.serve import rag_serve

#: Small pixel range so images give 4..64 tokens on the toy model (the real default is 256..1280 x 28²).
MM_MIN_PIXELS = 4 * 28 * 28
MM_MAX_PIXELS = 64 * 28 * 28
MM_MAX_BODY_BYTES = 2_000_000
MM_MAX_IMAGE_PIXELS = 4_000_000


def png_bytes(size: tuple[int, int], seed: int = 0) -> bytes:
    """A noisy RGB PNG (noise, so random-weight vectors differ between images)."""
    rng = __import__("numpy").random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype="uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def mm_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image root with ok.png and an escaping symlink, a directory outside the root with secret.png)."""
    base = tmp_path_factory.mktemp("mm-images")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "ok.png").write_bytes(png_bytes((60, 40), seed=1))
    (outside / "secret.png").write_bytes(png_bytes((30, 30), seed=2))
    os.symlink(outside / "secret.png", root / "escape.png")
    return root, outside


@pytest.fixture(scope="session")
def mm_server(tiny_gme: Path, mm_dirs: tuple[Path, Path]) -> Iterator[str]:
    """``rag-serve mm-embed`` on the tiny GME, paths allowed under one root, URLs allowed (internal refused)."""
    root, _ = mm_dirs
    with rag_serve(
        "mm-embed", tiny_gme, "--min-pixels", str(MM_MIN_PIXELS), "--max-pixels", str(MM_MAX_PIXELS),
        "--image-root", str(root), "--allow-url-images", "--url-timeout-s", "3",
        "--max-body-bytes", str(MM_MAX_BODY_BYTES), "--max-image-pixels", str(MM_MAX_IMAGE_PIXELS),
        "--max-batch-tokens", "4096",
    ) as base:
        yield base


@pytest.fixture(scope="session")
def mm_server_no_urls(tiny_gme: Path) -> Iterator[str]:
    """Same model with the defaults: no image paths, no URLs."""
    with rag_serve("mm-embed", tiny_gme, "--min-pixels", str(MM_MIN_PIXELS), "--max-pixels", str(MM_MAX_PIXELS),
                   "--max-batch-tokens", "4096") as base:
        yield base
