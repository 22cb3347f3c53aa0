"""How the per-field result lists are fused: RRF or weighted, validated up front."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rag_plugins.milvus._pymilvus import import_pymilvus
from rag_plugins.milvus.errors import FusionConfigError

FusionName = Literal["rrf", "weighted"]
FUSIONS: tuple[str, ...] = ("rrf", "weighted")
DEFAULT_RRF_K = 60
#: Milvus accepts RRF k in (0, 16384).
MAX_RRF_K = 16_384


@dataclass(frozen=True)
class Fusion:
    """A validated fusion choice.

    Attributes:
        name: ``rrf`` (score = Σ 1/(k + rank), rank from 1 per field) or ``weighted`` (score = α·s_text +
            (1−α)·s_image on Milvus' per-metric normalized scores).
        rrf_k: RRF's ``k``.
        weights: ``(α, 1−α)`` for ``text_vec`` and ``image_vec``; each in [0, 1], summing to 1.
    """

    name: FusionName = "rrf"
    rrf_k: int = DEFAULT_RRF_K
    weights: tuple[float, float] = (0.5, 0.5)

    def __post_init__(self) -> None:
        if self.name not in FUSIONS:
            raise FusionConfigError(
                f"unknown fusion {self.name!r}: use fusion='rrf' (reciprocal rank fusion, with rrf_k) or "
                f"fusion='weighted' (with weights=(alpha, 1 - alpha))"
            )
        if not 0 < self.rrf_k < MAX_RRF_K:
            raise FusionConfigError(f"rrf_k must be in (0, {MAX_RRF_K}), got {self.rrf_k}; 60 is the usual value")
        if len(self.weights) != 2:
            raise FusionConfigError(
                f"weights must be two numbers (alpha for text_vec, 1 - alpha for image_vec), got {self.weights!r}"
            )
        if any(not 0.0 <= w <= 1.0 for w in self.weights) or not math.isclose(sum(self.weights), 1.0, abs_tol=1e-6):
            raise FusionConfigError(
                f"weights must be in [0, 1] and sum to 1, got {tuple(self.weights)!r} (sum {sum(self.weights)}); "
                f"use weights=(alpha, 1 - alpha)"
            )

    def with_overrides(self, name: str | None = None, rrf_k: int | None = None,
                       weights: tuple[float, float] | None = None) -> Fusion:
        """A copy with the given parts replaced (validated again)."""
        return Fusion(
            name=name if name is not None else self.name,  # type: ignore[arg-type]
            rrf_k=rrf_k if rrf_k is not None else self.rrf_k,
            weights=tuple(weights) if weights is not None else self.weights,  # type: ignore[arg-type]
        )

    def fuse(self, per_field: dict[str, list[tuple[str, float]]], top_k: int,
             metrics: dict[str, str] | None = None) -> list[tuple[str, float]]:
        """Fuse per-field hit lists in process, with the formulas of Milvus' rankers.

        RRF: score = Σ 1 / (k + rank), rank from 1 in each field's list. Weighted (``norm_score=True``, the
        pymilvus default): each similarity is first mapped to [0, 1] by its metric, ``(1 + cos) / 2`` for
        COSINE and ``0.5 + atan(ip) / π`` for IP, then α·text + (1−α)·image; a row missing from a field's
        list gets nothing from that field.

        Args:
            per_field: ``{"text_vec" | "image_vec": [(key, similarity), ...]}``, each best first.
            top_k: Results returned.
            metrics: ``{field: "COSINE" | "IP"}`` (default COSINE).

        Returns:
            ``[(key, fused score)]``, best first, ties by key (as Milvus Lite cuts and as
            :meth:`MultiVectorMilvusStore.search` orders Milvus' answer).
        """
        weight = {"text_vec": self.weights[0], "image_vec": self.weights[1]}
        fused: dict[str, float] = {}
        for name, hits in per_field.items():
            if not hits:
                continue
            if self.name == "rrf":
                for rank, (key, _) in enumerate(hits, start=1):
                    fused[key] = fused.get(key, 0.0) + 1.0 / (self.rrf_k + rank)
                continue
            ip = (metrics or {}).get(name, "COSINE") == "IP"
            for key, score in hits:
                norm = 0.5 + math.atan(score) / math.pi if ip else (1.0 + score) * 0.5
                fused[key] = fused.get(key, 0.0) + weight[name] * norm
        # Milvus sends scores as float32: round the same way, so near-ties order (by key) as they do there.
        fused = {key: float(np.float32(score)) for key, score in fused.items()}
        return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]

    def ranker(self, fields: list[str]) -> Any:
        """The pymilvus ranker for requests on ``fields`` (subset of text_vec, image_vec, in that order)."""
        pymilvus = import_pymilvus()
        if self.name == "rrf":
            return pymilvus.RRFRanker(self.rrf_k)
        by_field = {"text_vec": self.weights[0], "image_vec": self.weights[1]}
        return pymilvus.WeightedRanker(*(by_field[f] for f in fields))
