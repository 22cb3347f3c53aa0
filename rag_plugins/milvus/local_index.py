"""In-process exact search for embedded (file URI) Milvus Lite collections.

Why: milvus-lite 3.x is a pure-Python engine. Its search path rebuilds, for *every* query and every vector
field, a per-row validity mask in a Python loop over all rows (cross-segment max-sequence dedup plus a
tombstone check, ``milvus_lite/search/executor_indexed.py``), before FAISS is even called. Profiled on the
engine API at 20,000 rows (1024-d, HNSW): 27 ms per single-field search, of which FAISS takes 0.4 ms and the
mask loops ~23 ms; the cost grows linearly with rows (~0.7 s per hybrid query at 100,000 rows through
``MilvusClient``). No index or search parameter removes it.

What: :class:`LocalMirror` keeps, per collection opened through a file URI, an in-memory copy of both
vector fields (float32, L2-normalized for COSINE) and the scalar fields, filled from Milvus when the store
opens and updated by every write the store makes (upsert, delete). Searches are exact (brute force over
``(n, dim)`` matrices with BLAS), so recall is 1.0; concurrent searches on the same field are coalesced into
one matrix-matrix product (the matrix is read once per batch instead of once per query), which is what makes
concurrent clients scale on a memory-bandwidth-bound machine. Milvus stays the source of truth: everything is
written there first, and ``count`` / ``get`` / ``query`` / filters still go to Milvus.

Limits: writes made behind the store's back (a raw ``MilvusClient`` on the same file) are not seen until
:meth:`MultiVectorMilvusStore.refresh_local_index`; memory is ``rows x (text_dim + image_dim) x 4`` bytes on
top of Milvus Lite's own copy; brute force grows linearly (about 0.1 ms per 1,000 rows of 2,560 floats on
the 2-core benchmark box), so past a few hundred thousand rows per field use a Milvus server (docs/scale.md).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_plugins.milvus.settings import AnnSettings

_GROW = 1024


def is_embedded_uri(uri: str) -> bool:
    """Whether ``uri`` opens Milvus Lite in process (a file path) rather than a server (``scheme://``)."""
    return "://" not in uri


@dataclass
class _Slot:
    """One waiting search in a :class:`_Coalescer`."""

    query: np.ndarray
    limit: int
    allowed: np.ndarray | None
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: tuple[np.ndarray, np.ndarray] | None = None
    error: BaseException | None = None


class _Coalescer:
    """Group concurrent calls into batches: one caller runs the batch, the others wait for their slot.

    A caller that finds no batch running runs its own at once (no added latency for a single client);
    callers that arrive meanwhile queue up and the next one of them runs everything queued, as one batch.
    """

    def __init__(self, run: Callable[[list[_Slot]], None]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._pending: list[_Slot] = []
        self._busy = False

    def submit(self, slot: _Slot) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self._pending.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.done.wait()
            if not slot.lead:
                return self._result(slot)
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            self._run(batch)
        except BaseException as exc:  # hand the error to every caller of the batch
            for s in batch:
                s.error = exc
        finally:
            with self._lock:
                if self._pending:
                    nxt = self._pending[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._busy = False
            for s in batch:
                if s is not slot:
                    s.done.set()
        return self._result(slot)

    @staticmethod
    def _result(slot: _Slot) -> tuple[np.ndarray, np.ndarray]:
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result


class FieldVectors:
    """In-memory vectors of one field, keyed by primary key: exact search, or IVF + exact re-scoring.

    Args:
        dim: Vector size.
        metric: ``COSINE`` (vectors and queries are L2-normalized, score = cosine) or ``IP`` (raw dot).
        ann: When to use the IVF index (:class:`AnnSettings`; None = the defaults).
    """

    def __init__(self, dim: int, metric: str, ann: AnnSettings | None = None) -> None:
        self.dim = dim
        self.metric = metric
        self.ann_settings = ann or AnnSettings()
        self._mat = np.zeros((_GROW, dim), np.float32)
        self._alive = np.zeros(_GROW, bool)
        self._keys: list[str] = []
        self._pos: dict[str, int] = {}
        self._lock = threading.RLock()
        self._coalescer = _Coalescer(self._run_batch)
        self._ann: Any = None
        self._ann_trained_rows = 0
        self.ann_build_s = 0.0

    def __len__(self) -> int:
        return len(self._pos)

    @property
    def keys(self) -> list[str]:
        """Row position -> key (dead rows keep their old key)."""
        return self._keys

    @property
    def uses_ann(self) -> bool:
        """Whether searches currently go through the IVF index."""
        return self._ann is not None

    def position(self, key: str) -> int | None:
        """The row of ``key`` (None when absent)."""
        return self._pos.get(key)

    def vector(self, pos: int) -> np.ndarray:
        """The stored (dim,) vector at row ``pos`` (normalized for COSINE)."""
        return self._mat[pos].copy()

    def normalized(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        """``vector`` as stored: (dim,) float32, L2-normalized for COSINE."""
        return self._prepare(np.asarray(vector))[0]

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        if self.metric == "COSINE":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = (x / np.where(norms == 0, 1.0, norms)).astype(np.float32)
        return x

    def upsert(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Add or replace rows. ``vectors``: (len(keys), dim)."""
        x = self._prepare(vectors)
        with self._lock:
            new = [k for k in keys if k not in self._pos]
            need = len(self._keys) + len(new)
            if need > self._mat.shape[0]:
                cap = max(need, 2 * self._mat.shape[0])
                mat = np.zeros((cap, self.dim), np.float32)
                mat[: len(self._keys)] = self._mat[: len(self._keys)]
                alive = np.zeros(cap, bool)
                alive[: len(self._keys)] = self._alive[: len(self._keys)]
                self._mat, self._alive = mat, alive
            old: list[int] = []
            positions = np.empty(len(keys), np.int64)
            for j, key in enumerate(keys):
                pos = self._pos.get(key)
                if pos is None:
                    pos = len(self._keys)
                    self._keys.append(key)
                    self._pos[key] = pos
                else:
                    old.append(pos)
                positions[j] = pos
            self._mat[positions] = x
            self._alive[positions] = True
            if self._ann is not None:
                if old:
                    self._ann.remove_ids(np.unique(np.asarray(old, np.int64)))
                last = {int(p): j for j, p in enumerate(positions)}  # a key given twice: its last vector
                pos_arr = np.fromiter(last, np.int64, len(last))
                self._ann.add_with_ids(self._mat[pos_arr], pos_arr)

    def remove(self, keys: Sequence[str]) -> None:
        """Drop rows (absent keys are ignored); compacts when over half the rows are dead."""
        with self._lock:
            gone = []
            for key in keys:
                pos = self._pos.pop(key, None)
                if pos is not None:
                    self._alive[pos] = False
                    gone.append(pos)
            if gone and self._ann is not None:
                self._ann.remove_ids(np.asarray(gone, np.int64))
            if len(self._keys) > _GROW and len(self._pos) < len(self._keys) // 2:
                self._compact()

    def _compact(self) -> None:
        n = len(self._keys)
        live = np.flatnonzero(self._alive[:n])
        self._keys = [self._keys[i] for i in live]
        self._pos = {k: i for i, k in enumerate(self._keys)}
        mat = np.zeros((max(_GROW, len(live)), self.dim), np.float32)
        mat[: len(live)] = self._mat[live]
        alive = np.zeros(mat.shape[0], bool)
        alive[: len(live)] = True
        self._mat, self._alive = mat, alive
        self._ann = None  # positions moved: rebuilt on the next search

    # ------------------------------------------------------------------------------------------ IVF index
    def build_index(self) -> bool:
        """Train and fill the IVF index now when the field has ``ann.threshold`` rows or more.

        Searches call this lazily; call it yourself to pay the build at ingestion time.

        Returns:
            Whether an index is in use afterwards.
        """
        with self._lock:
            cfg = self.ann_settings
            live = len(self._pos)
            if cfg.threshold <= 0 or live < cfg.threshold:
                self._ann = None
                return False
            if self._ann is not None and live <= cfg.retrain_growth * self._ann_trained_rows:
                return True
            import faiss

            t0 = time.perf_counter()
            n = len(self._keys)
            positions = np.flatnonzero(self._alive[:n]).astype(np.int64)
            nlist = cfg.nlist(live)
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                  faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = cfg.niter
            index.cp.max_points_per_centroid = cfg.train_per_list
            index.cp.min_points_per_centroid = 1  # small samples are intended: no FAISS warning
            rng = np.random.default_rng(0)
            sample = positions if live <= cfg.train_per_list * nlist else np.sort(
                rng.choice(positions, cfg.train_per_list * nlist, replace=False))
            index.train(np.ascontiguousarray(self._mat[sample]))
            for start in range(0, positions.shape[0], 65_536):
                chunk = positions[start : start + 65_536]
                index.add_with_ids(self._mat[chunk], chunk)
            index.nprobe = min(cfg.nprobe, nlist)
            self._ann, self._ann_trained_rows = index, live
            self.ann_build_s = time.perf_counter() - t0
            return True

    def set_index(self, index: Any, trained_rows: int) -> None:
        """Use a saved IVF index (see :func:`save_mirror`); it must hold exactly the live positions."""
        with self._lock:
            self._ann, self._ann_trained_rows = index, trained_rows

    @property
    def index(self) -> Any:
        """The FAISS index in use (None when searches are exact)."""
        return self._ann

    def mask_of(self, keys: set[str]) -> np.ndarray:
        """Bool (rows,) that is True at the rows of ``keys``."""
        with self._lock:
            mask = np.zeros(len(self._keys), bool)
            idx = [self._pos[k] for k in keys if k in self._pos]
            mask[idx] = True
            return mask

    def search(self, query: np.ndarray, limit: int, allowed: np.ndarray | None = None) -> list[tuple[str, float]]:
        """Top-``limit`` (key, score), best first, ties by key (exact scores; exact ranking below the threshold).

        Args:
            query: (dim,) query vector.
            limit: Results wanted.
            allowed: Optional bool (rows,) from :meth:`mask_of`; rows outside it are skipped.
        """
        q = self._prepare(query)[0]
        idx, scores = self._coalescer.submit(_Slot(q, limit, allowed))
        with self._lock:
            hits = [(self._keys[int(i)], float(s)) for i, s in zip(idx, scores, strict=True)]
        hits.sort(key=lambda h: (-h[1], h[0]))
        return hits

    def _run_batch(self, batch: list[_Slot]) -> None:
        with self._lock:
            n = len(self._keys)
            mat, alive = self._mat[:n], self._alive[:n]
            if n == 0:
                for s in batch:
                    s.result = (np.zeros(0, np.int64), np.zeros(0, np.float32))
                return
            if self.build_index():
                self._run_ann(batch, mat, alive)
                return
            queries = np.stack([s.query for s in batch])
            scores = queries @ mat.T  # (nq, n): one pass over the matrix for the whole batch
            for row, slot in zip(scores, batch, strict=True):
                valid = alive if slot.allowed is None else alive & _fit(slot.allowed, n)
                slot.result = _top(row, valid, slot.limit)

    def _run_ann(self, batch: list[_Slot], mat: np.ndarray, alive: np.ndarray) -> None:
        """IVF candidates for the whole batch in one FAISS call, then exact re-scoring per query."""
        cfg = self.ann_settings
        plain = [s for s in batch if s.allowed is None]
        if plain:
            k = max(int(np.ceil(cfg.overfetch * s.limit)) for s in plain)
            _, found = self._ann.search(np.stack([s.query for s in plain]), k)
            for slot, cand in zip(plain, found, strict=True):
                cand = cand[cand >= 0]
                slot.result = _top(mat[cand] @ slot.query, alive[cand], slot.limit, cand)
        for slot in batch:
            if slot.allowed is None:
                continue
            valid = alive & _fit(slot.allowed, mat.shape[0])
            rows = np.flatnonzero(valid)
            if rows.shape[0] > cfg.threshold:  # a broad filter: IVF restricted to the allowed rows
                import faiss

                bits = np.packbits(valid, bitorder="little")
                selector = faiss.IDSelectorBitmap(valid.shape[0], faiss.swig_ptr(bits))
                params = faiss.SearchParametersIVF()
                params.sel, params.nprobe = selector, self._ann.nprobe
                _, found = self._ann.search(slot.query[None, :], int(np.ceil(cfg.overfetch * slot.limit)),
                                            params=params)
                cand = found[0][found[0] >= 0]
                if cand.shape[0] >= min(slot.limit, rows.shape[0]):
                    slot.result = _top(mat[cand] @ slot.query, valid[cand], slot.limit, cand)
                    continue
            slot.result = _top(mat[rows] @ slot.query, np.ones(rows.shape[0], bool), slot.limit, rows)


def _fit(mask: np.ndarray, n: int) -> np.ndarray:
    if mask.shape[0] >= n:
        return mask[:n]
    return np.concatenate([mask, np.zeros(n - mask.shape[0], bool)])


def _top(scores: np.ndarray, valid: np.ndarray, limit: int,
         rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``limit`` best valid entries (the boundary ties all kept, then cut by key).

    Args:
        scores: (m,) scores.
        valid: (m,) bool; False entries are skipped.
        limit: Entries wanted.
        rows: Optional (m,) row positions of the entries (returned instead of entry indices).
    """
    if not valid.all():
        candidates = np.flatnonzero(valid)
        scores = scores[candidates]
    else:
        candidates = None
    k = min(limit, scores.shape[0])
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if k < scores.shape[0]:
        kth = np.partition(scores, scores.shape[0] - k)[scores.shape[0] - k]
        part = np.flatnonzero(scores >= kth)  # every entry tied with the k-th, so ties are cut by key later
    else:
        part = np.arange(scores.shape[0])
    idx = part if candidates is None else candidates[part]
    return (idx if rows is None else rows[idx]), scores[part]


class LocalMirror:
    """Both vector fields and the scalar fields of one collection, in process (see the module docstring).

    Args:
        dims: ``{field: dim}`` of the vector fields.
        metrics: ``{field: "COSINE" | "IP"}``.
        ann: When fields switch to the IVF index (None = :class:`AnnSettings` defaults).
    """

    def __init__(self, dims: dict[str, int], metrics: dict[str, str], ann: AnnSettings | None = None) -> None:
        self.fields = {f: FieldVectors(dims[f], metrics[f], ann) for f in dims}
        self.rows: dict[str, dict[str, Any]] = {}
        self.version = 0
        #: True while the side files written by :meth:`save` match this copy.
        self.persisted = False
        self._lock = threading.RLock()
        self._filter_cache: dict[tuple[str, str, int], np.ndarray] = {}

    def upsert(self, rows: Sequence[dict[str, Any]], flags: dict[str, str], scalar_fields: Sequence[str]) -> None:
        """Apply rows as written to Milvus (``id``, vector fields, ``has_*`` flags, scalars)."""
        with self._lock:
            for name, vectors in self.fields.items():
                flag = flags[name]
                keep = [r for r in rows if r[flag]]
                drop = [str(r["id"]) for r in rows if not r[flag]]
                if keep:
                    vectors.upsert([str(r["id"]) for r in keep], np.asarray([r[name] for r in keep], np.float32))
                if drop:
                    vectors.remove(drop)
            for r in rows:
                self.rows[str(r["id"])] = {k: r[k] for k in scalar_fields if k in r}
            self._changed()

    def remove(self, keys: Sequence[str]) -> None:
        """Forget rows deleted from Milvus."""
        with self._lock:
            for vectors in self.fields.values():
                vectors.remove(keys)
            for key in keys:
                self.rows.pop(key, None)
            self._changed()

    def clear(self) -> None:
        """Forget everything (the collection was dropped)."""
        with self._lock:
            self.remove(list(self.rows))

    def _changed(self) -> None:
        self.version += 1
        self._filter_cache.clear()

    def allowed(self, field_name: str, expr: str, resolve: Callable[[str], set[str]]) -> np.ndarray:
        """Row mask of ``field_name`` for the keys matching ``expr`` (``resolve`` asks Milvus; cached)."""
        with self._lock:
            key = (field_name, expr, self.version)
            mask = self._filter_cache.get(key)
        if mask is None:
            mask = self.fields[field_name].mask_of(resolve(expr))
            with self._lock:
                if len(self._filter_cache) > 64:
                    self._filter_cache.clear()
                self._filter_cache[key] = mask
        return mask

    def memory_bytes(self) -> int:
        """Bytes held by the vector matrices and the IVF indexes (fp16 codes + ids)."""
        total = 0
        for v in self.fields.values():
            total += v._mat.nbytes
            if v.index is not None:
                total += v.index.ntotal * (v.index.code_size + 8)
        return total

    def build_indexes(self) -> dict[str, float]:
        """Build the IVF index of every field that has enough rows; ``{field: seconds}`` (0 when exact)."""
        out = {}
        for name, vectors in self.fields.items():
            t = time.perf_counter()
            vectors.build_index()
            out[name] = time.perf_counter() - t
        return out

    # ----------------------------------------------------------------------------------------- side files
    def save(self, folder: Path, count: int) -> None:
        """Write the copy under ``folder``: per field ``.npy`` rows + alive mask + keys (+ IVF index), scalars.

        Args:
            folder: Target directory (created; replaced atomically via a temporary sibling).
            count: Rows of the collection now (checked by :meth:`load`).
        """
        import faiss

        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with self._lock:
            manifest: dict[str, Any] = {"format": 1, "count": count, "rows": len(self.rows), "fields": {}}
            for name, v in self.fields.items():
                with v._lock:
                    n = len(v._keys)
                    np.save(tmp / f"{name}.npy", v._mat[:n])
                    np.save(tmp / f"{name}.alive.npy", v._alive[:n])
                    (tmp / f"{name}.keys.json").write_text(json.dumps(v._keys))
                    if v.index is not None:
                        faiss.write_index(v.index, str(tmp / f"{name}.ivf"))
                    manifest["fields"][name] = {"dim": v.dim, "metric": v.metric, "positions": n,
                                                "live": len(v), "trained_rows": v._ann_trained_rows,
                                                "index": v.index is not None}
            with (tmp / "rows.jsonl").open("w", encoding="utf-8") as fh:
                for key, row in self.rows.items():
                    fh.write(json.dumps([key, row], ensure_ascii=False) + "\n")
            (tmp / "manifest.json").write_text(json.dumps(manifest))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    def load(self, folder: Path, count: int) -> bool:
        """Fill this (empty) copy from :meth:`save` files when they match ``count`` rows and this schema.

        Returns:
            Whether the files were used (False: missing, stale or of another schema; nothing loaded).
        """
        import faiss

        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        fields = manifest.get("fields", {})
        if manifest.get("format") != 1 or manifest.get("count") != count or manifest.get("rows") != count:
            return False
        if set(fields) != set(self.fields) or any(
            fields[f]["dim"] != v.dim or fields[f]["metric"] != v.metric for f, v in self.fields.items()
        ):
            return False
        with self._lock:
            for name, v in self.fields.items():
                meta = fields[name]
                mat = np.load(folder / f"{name}.npy")
                alive = np.load(folder / f"{name}.alive.npy")
                keys = json.loads((folder / f"{name}.keys.json").read_text())
                with v._lock:
                    v._mat, v._alive, v._keys = mat, alive, keys
                    v._pos = {k: i for i, k in enumerate(keys) if alive[i]}
                    v._ann = faiss.read_index(str(folder / f"{name}.ivf")) if meta["index"] else None
                    v._ann_trained_rows = int(meta["trained_rows"])
            with (folder / "rows.jsonl").open(encoding="utf-8") as fh:
                for line in fh:
                    key, row = json.loads(line)
                    self.rows[key] = row
            self._changed()
        return True


_REGISTRY: dict[tuple[str, str, str], LocalMirror] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_mirror(key: tuple[str, str, str], make: Callable[[], LocalMirror]) -> tuple[LocalMirror, bool]:
    """The process-wide mirror of ``key`` (path, database, collection); ``(mirror, created)``."""
    with _REGISTRY_LOCK:
        mirror = _REGISTRY.get(key)
        if mirror is not None:
            return mirror, False
        mirror = make()
        _REGISTRY[key] = mirror
        return mirror, True


def forget_mirror(key: tuple[str, str, str]) -> None:
    """Drop the mirror of ``key`` (after the collection is dropped)."""
    with _REGISTRY_LOCK:
        _REGISTRY.pop(key, None)
