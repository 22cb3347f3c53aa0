"""The embedded default's write path end to end: a process ingests into a Milvus Lite file and exits, another
reopens the file and finds every row exactly once, with the same search results.

The ingest runs in a child process because Milvus Lite keeps its file locked until the process that opened
it exits; reopening in a fresh process is what a restarted application does. Default settings throughout
(file URI: FLAT on the Milvus side, inserts for new keys, searches from the in-process copy).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rag_plugins.milvus.local_index import forget_mirror
from rag_plugins.milvus.settings import MilvusStoreSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore
from tests.support.serve import REPO_ROOT

N_ROWS = 3000
TEXT_DIM, IMAGE_DIM = 32, 48

CHILD = f"""
import json, sys
import numpy as np
from rag_plugins.milvus.items import StoreItem
from rag_plugins.milvus.settings import MilvusStoreSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore

uri, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(5)
tv = rng.standard_normal((n, {TEXT_DIM})).astype(np.float32)
iv = rng.standard_normal((n, {IMAGE_DIM})).astype(np.float32)
store = MultiVectorMilvusStore(settings=MilvusStoreSettings(uri=uri, collection_name="kb", text_dim={TEXT_DIM},
                                                            image_dim={IMAGE_DIM}))
items = [StoreItem(text=f"row {{i}}", id=f"r{{i:05d}}", doc_id=f"d{{i % 7}}") for i in range(n)]
for s in range(0, n, 500):  # new keys: written with insert
    stop = min(s + 500, n)
    store.upsert_vectors(items[s:stop], [None if i % 11 == 3 else tv[i] for i in range(s, stop)], list(iv[s:stop]))
# Known keys again (upsert path), one batch mixing them with a repeated key.
store.upsert_vectors(items[100:300] + items[100:101], list(tv[100:300]) + [tv[7]], list(iv[100:300] + 0.5) + [iv[7]])
hits = {{}}
for q in range(5):
    found = store.search(tv[q * 97], iv[q * 131], top_k=20, text_limit=50, image_limit=50)
    hits[q] = [[h.id, h.score] for h in found]
store.close()
print(json.dumps({{"hits": hits, "queries": [[q * 97, q * 131] for q in range(5)]}}))
"""


def _vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return (rng.standard_normal((N_ROWS, TEXT_DIM)).astype(np.float32),
            rng.standard_normal((N_ROWS, IMAGE_DIM)).astype(np.float32))


def _same(found: list[list[object]], expected: list[list[object]]) -> None:
    assert [h[0] for h in found] == [h[0] for h in expected]
    np.testing.assert_allclose([float(h[1]) for h in found], [float(h[1]) for h in expected],  # type: ignore[arg-type]
                               rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(600)
def test_rows_survive_reopen_exactly_once_with_the_same_search_results(tmp_path: Path) -> None:
    uri = str(tmp_path / "kb.db")
    child = subprocess.run([sys.executable, "-c", CHILD, uri, str(N_ROWS)], capture_output=True, text=True,
                           timeout=500, cwd=REPO_ROOT)
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    tv, iv = _vectors()

    store = MultiVectorMilvusStore(settings=MilvusStoreSettings(uri=uri, collection_name="kb"))
    assert store.local is not None
    assert store.local.persisted  # the saved copy matched the file
    assert store.count() == N_ROWS
    ids = [r["id"] for r in store.query('id != ""', output_fields=["id"])]
    assert len(ids) == len(set(ids)) == N_ROWS
    assert store.count("has_text_vec == false") == len([i for i in range(N_ROWS) if i % 11 == 3 and not
                                                         100 <= i < 300])
    assert store.client.describe_index("kb", "text_vec")["index_type"] == "FLAT"
    rewritten = store.get(["r00150"], output_fields=["id", "image_vec", "has_text_vec"])[0]
    np.testing.assert_allclose(rewritten["image_vec"], iv[150] + 0.5, rtol=1e-6)
    assert rewritten["has_text_vec"]

    twin = MultiVectorMilvusStore(settings=MilvusStoreSettings(uri=uri, collection_name="kb", local_search=False),
                                  client=store.client)
    for q, (ti, ii) in enumerate(out["queries"]):
        expected = out["hits"][str(q)]
        args = (tv[ti], iv[ii])
        kw = {"top_k": 20, "text_limit": 50, "image_limit": 50}
        _same([[h.id, h.score] for h in store.search(*args, **kw)], expected)  # type: ignore[arg-type]
        _same([[h.id, h.score] for h in twin.search(*args, **kw)], expected)  # type: ignore[arg-type]
    # The copy re-read from Milvus (not from the side files) answers the same.
    store.refresh_local_index()
    ti, ii = out["queries"][0]
    _same([[h.id, h.score] for h in store.search(tv[ti], iv[ii], top_k=20, text_limit=50, image_limit=50)],
          out["hits"]["0"])
    store.close()
    forget_mirror(store._local_key())
