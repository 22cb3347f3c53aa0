"""A small generated multimodal set (coloured shapes + captions), retrieval metrics and the fusion ablation.

Used by ``notebooks/02_fusion_ablation.ipynb`` (and ``01_quickstart``); kept here so the notebooks only
orchestrate. Every image is a PNG of one coloured shape on a light background, with a caption that names
the colour and/or the shape in varied words (some captions leave one out, so a text-only search cannot be
perfect and the image vector has something to add). A query asks for one colour + shape; the relevant items
are the images of that colour and shape.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from rag_plugins.milvus.items import StoreItem

#: Colour name -> (RGB, words a caption may use for it).
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((215, 40, 40), ("red", "crimson", "scarlet")),
    "green": ((40, 170, 60), ("green", "emerald", "grass-green")),
    "blue": ((40, 80, 210), ("blue", "navy", "azure")),
    "yellow": ((235, 210, 40), ("yellow", "golden", "lemon")),
    "purple": ((140, 50, 170), ("purple", "violet", "lilac")),
}
#: Shape name -> words a caption may use for it.
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge", "three-sided shape"),
}
#: Caption templates: {c} colour word, {s} shape word. The last two drop one attribute.
CAPTION_TEMPLATES = (
    "a {c} {s}",
    "picture of a {c} {s} on a plain background",
    "{s}, coloured {c}",
    "a simple {s} drawing",
    "something {c}",
)
DOC_ID = "shapes"


@dataclass(frozen=True)
class SampleItem:
    """One generated image with its caption and ground-truth labels (labels are not stored in Milvus)."""

    id: str
    path: Path
    caption: str
    colour: str
    shape: str

    def store_item(self) -> StoreItem:
        """The item to ingest: the image file (-> ``image_vec``) and its caption (-> ``text_vec``)."""
        return StoreItem(image=str(self.path), caption=self.caption, doc_id=DOC_ID, chunk_id=self.id,
                         modality="image")


@dataclass(frozen=True)
class SampleQuery:
    """A text query and the ids of its relevant items."""

    text: str
    relevant: frozenset[str]


def draw_shape(colour: str, shape: str, size: int, rng: random.Random) -> Image.Image:
    """A ``size`` x ``size`` RGB image of one shape, with jittered position, scale and background."""
    bg = tuple(235 + rng.randint(-15, 15) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(img)
    rgb = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in COLOURS[colour][0])
    r = size * rng.uniform(0.22, 0.38)
    cx, cy = size / 2 + rng.uniform(-size / 8, size / 8), size / 2 + rng.uniform(-size / 8, size / 8)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(pts, fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {sorted(SHAPES)}")
    return img


def generate_set(root: str | Path, per_combo: int = 3, size: int = 112, seed: int = 0) -> list[SampleItem]:
    """Write ``per_combo`` images per (colour, shape) under ``root``; return the items, in a fixed order."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items = []
    for colour, (_, colour_words) in COLOURS.items():
        for shape, shape_words in SHAPES.items():
            for i in range(per_combo):
                item_id = f"{colour}-{shape}-{i}"
                path = root / f"{item_id}.png"
                draw_shape(colour, shape, size, rng).save(path)
                template = CAPTION_TEMPLATES[rng.randrange(len(CAPTION_TEMPLATES))]
                caption = template.format(c=rng.choice(colour_words), s=rng.choice(shape_words))
                items.append(SampleItem(item_id, path, caption, colour, shape))
    return items


def make_queries(items: Sequence[SampleItem]) -> list[SampleQuery]:
    """One query per (colour, shape) present: ``"a {colour} {shape}"``."""
    groups: dict[tuple[str, str], set[str]] = {}
    for it in items:
        groups.setdefault((it.colour, it.shape), set()).add(it.id)
    return [SampleQuery(f"a {c} {s}", frozenset(ids)) for (c, s), ids in groups.items()]


# ------------------------------------------------------------------------------------------------ metrics
def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """|relevant ∩ ranked[:k]| / |relevant| (0 when nothing is relevant)."""
    rel = set(relevant)
    return len(rel & set(ranked[:k])) / len(rel) if rel else 0.0


def reciprocal_rank(ranked: Sequence[str], relevant: Iterable[str]) -> float:
    """1 / rank of the first relevant id (0 when none is retrieved)."""
    rel = set(relevant)
    return next((1.0 / r for r, i in enumerate(ranked, start=1) if i in rel), 0.0)


def evaluate(runs: dict[str, Sequence[str]], queries: Sequence[SampleQuery],
             ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean Recall@k for each k and MRR over ``queries``; ``runs`` maps query text -> ranked ids."""
    out = {f"Recall@{k}": sum(recall_at_k(runs[q.text], q.relevant, k) for q in queries) / len(queries)
           for k in ks}
    out["MRR"] = sum(reciprocal_rank(runs[q.text], q.relevant) for q in queries) / len(queries)
    return out


# ----------------------------------------------------------------------------------------------- ablation
@dataclass(frozen=True)
class AblationConfig:
    """One retrieval setting: which fields, which fusion, whether the rerank stage runs."""

    name: str
    use_text: bool = True
    use_image: bool = True
    fusion: str = "rrf"
    alpha: float | None = None
    rerank: bool = False


def ablation_configs(alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> list[AblationConfig]:
    """text-only, image-space-only, text+image RRF, weighted α sweep (α on text_vec), RRF + rerank."""
    return [
        AblationConfig("text-only", use_image=False),
        AblationConfig("image-space only", use_text=False),
        AblationConfig("text+image RRF"),
        *(AblationConfig(f"weighted α={a:g}", fusion="weighted", alpha=a) for a in alphas),
        AblationConfig("text+image RRF + rerank", rerank=True),
    ]


def node_chunk_id(node_with_score: Any) -> str:
    """The item id (``chunk_id``) of a retrieved ``NodeWithScore``."""
    return str(node_with_score.node.metadata.get("chunk_id", ""))


def run_ablation(
    make_retriever: Callable[[AblationConfig], Any],
    queries: Sequence[SampleQuery],
    configs: Sequence[AblationConfig] | None = None,
    *,
    top_k: int = 10,
    rerank_depth: int = 20,
    ks: Sequence[int] = (1, 5, 10),
) -> list[dict[str, Any]]:
    """Retrieve every query under every config and score it; one row per config (``config`` + metrics).

    ``make_retriever(config)`` returns a ``HybridRetriever`` set up for the config's fields and, for rerank
    configs, its reranker; fusion and weights are passed per query through ``retrieve_with``. A rerank config
    retrieves ``rerank_depth`` fused candidates and keeps the reranker's best ``top_k``; every run is scored
    on its first ``top_k`` ids.
    """
    rows = []
    for cfg in configs or ablation_configs():
        retriever = make_retriever(cfg)
        overrides: dict[str, Any] = {"fusion": cfg.fusion, "top_k": rerank_depth if cfg.rerank else top_k}
        if cfg.alpha is not None:
            overrides["weights"] = (cfg.alpha, 1.0 - cfg.alpha)
        runs = {q.text: [node_chunk_id(n) for n in retriever.retrieve_with(q.text, rerank=cfg.rerank,
                                                                           **overrides)][:top_k]
                for q in queries}
        rows.append({"config": cfg.name, "alpha": cfg.alpha, **evaluate(runs, queries, ks)})
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """The ablation rows as a markdown table (config + metric columns)."""
    metrics = [k for k in rows[0] if k not in ("config", "alpha")]
    lines = ["| config | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += [f"| {r['config']} | " + " | ".join(f"{r[m]:.{digits}f}" for m in metrics) + " |" for r in rows]
    return "\n".join(lines)


def plot_ablation(rows: Sequence[dict[str, Any]], path: str | Path | None = None) -> Any:
    """Bar chart of every metric per config, and the α sweep as lines; saved to ``path`` when given."""
    import matplotlib.pyplot as plt

    metrics = [k for k in rows[0] if k not in ("config", "alpha")]
    fig, (ax_bar, ax_alpha) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        ax_bar.bar([i + j * width for i in range(len(rows))], [r[m] for r in rows], width, label=m)
    ax_bar.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax_bar.set_xticklabels([r["config"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax_bar.set_ylim(0, 1.05)
    ax_bar.set_title("Retrieval quality per configuration")
    ax_bar.legend(fontsize=8)
    sweep = sorted((r for r in rows if r.get("alpha") is not None), key=lambda r: r["alpha"])
    for m in metrics:
        ax_alpha.plot([r["alpha"] for r in sweep], [r[m] for r in sweep], marker="o", label=m)
    ax_alpha.set_xlabel("α (weight of text_vec; 1 − α on image_vec)")
    ax_alpha.set_ylim(0, 1.05)
    ax_alpha.set_title("Weighted fusion: α sweep")
    ax_alpha.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
