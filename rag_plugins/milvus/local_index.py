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

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    """Exact in-memory vectors of one field, keyed by primary key.

    Args:
        dim: Vector size.
        metric: ``COSINE`` (vectors and queries are L2-normalized, score = cosine) or ``IP`` (raw dot).
    """

    def __init__(self, dim: int, metric: str) -> None:
        self.dim = dim
        self.metric = metric
        self._mat = np.zeros((_GROW, dim), np.float32)
        self._alive = np.zeros(_GROW, bool)
        self._keys: list[str] = []
        self._pos: dict[str, int] = {}
        self._lock = threading.RLock()
        self._coalescer = _Coalescer(self._run_batch)

    def __len__(self) -> int:
        return len(self._pos)

    @property
    def keys(self) -> list[str]:
        """Row position -> key (dead rows keep their old key)."""
        return self._keys

    def position(self, key: str) -> int | None:
        """The row of ``key`` (None when absent)."""
        return self._pos.get(key)

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
            for key, row in zip(keys, x, strict=True):
                pos = self._pos.get(key)
                if pos is None:
                    pos = len(self._keys)
                    self._keys.append(key)
                    self._pos[key] = pos
                self._mat[pos] = row
                self._alive[pos] = True

    def remove(self, keys: Sequence[str]) -> None:
        """Drop rows (absent keys are ignored); compacts when over half the rows are dead."""
        with self._lock:
            for key in keys:
                pos = self._pos.pop(key, None)
                if pos is not None:
                    self._alive[pos] = False
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

    def mask_of(self, keys: set[str]) -> np.ndarray:
        """Bool (rows,) that is True at the rows of ``keys``."""
        with self._lock:
            mask = np.zeros(len(self._keys), bool)
            idx = [self._pos[k] for k in keys if k in self._pos]
            mask[idx] = True
            return mask

    def search(self, query: np.ndarray, limit: int, allowed: np.ndarray | None = None) -> list[tuple[str, float]]:
        """Exact top-``limit`` (key, score), best first, ties by key.

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
            queries = np.stack([s.query for s in batch])
            scores = queries @ mat.T  # (nq, n): one pass over the matrix for the whole batch
            for row, slot in zip(scores, batch, strict=True):
                valid = alive if slot.allowed is None else alive & _fit(slot.allowed, n)
                slot.result = _top(row, valid, slot.limit)


def _fit(mask: np.ndarray, n: int) -> np.ndarray:
    if mask.shape[0] >= n:
        return mask[:n]
    return np.concatenate([mask, np.zeros(n - mask.shape[0], bool)])


def _top(scores: np.ndarray, valid: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``limit`` best valid entries (the boundary ties all kept, then cut by key)."""
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
    return idx, scores[part]


class LocalMirror:
    """Both vector fields and the scalar fields of one collection, in process (see the module docstring).

    Args:
        dims: ``{field: dim}`` of the vector fields.
        metrics: ``{field: "COSINE" | "IP"}``.
    """

    def __init__(self, dims: dict[str, int], metrics: dict[str, str]) -> None:
        self.fields = {f: FieldVectors(dims[f], metrics[f]) for f in dims}
        self.rows: dict[str, dict[str, Any]] = {}
        self.version = 0
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
        """Bytes held by the vector matrices."""
        return sum(v._mat.nbytes for v in self.fields.values())


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
