"""Property-based fuzzing of every server's OpenAPI schema (schemathesis) and API-key enforcement."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.e2e.reliability.conftest import Stack

SERVERS = ("text", "images", "rerank")
EXAMPLES_PER_OPERATION = 12
#: Routes that answer without a key (load balancers and supervisors probe them).
PUBLIC = {"/health", "/healthz"}


def _auth(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.api_key}"}


def _fuzz_operation(op: Any, mode: Any, base: str, headers: dict[str, str],
                    seen: list[tuple[str, str, int, list[str]]]) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    documented = sorted(op.definition.raw.get("responses", {}))

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: Any) -> None:
        resp = case.call(base_url=base, headers=headers, timeout=60)
        seen.append((op.method.upper(), op.path, resp.status_code, documented))

    run()


def fuzz(base: str, headers: dict[str, str]) -> list[tuple[str, str, int, list[str]]]:
    """Run schemathesis-generated cases (valid and invalid bodies) against every operation.

    Returns:
        One ``(method, path, status, documented statuses)`` per request sent.
    """
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    spec = requests.get(f"{base}/openapi.json", headers=headers, timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    seen: list[tuple[str, str, int, list[str]]] = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_operation(op, mode, base, headers, seen)
            except Unsatisfiable:
                # Negative mode on an operation with no parameters and no body: nothing can be made invalid.
                assert mode == GenerationMode.NEGATIVE, (op.method, op.path)
    return seen


@pytest.fixture(scope="module")
def fuzz_results(cpu_stack: Stack) -> dict[str, list[tuple[str, str, int, list[str]]]]:
    return {name: fuzz(cpu_stack.urls[name], _auth(cpu_stack)) for name in SERVERS}


@pytest.mark.parametrize("server", SERVERS)
def test_fuzz_no_5xx_and_healthy_after(
    cpu_stack: Stack, fuzz_results: dict[str, list[tuple[str, str, int, list[str]]]], server: str,
    report: Callable[..., None],
) -> None:
    seen = fuzz_results[server]
    operations = {(m, p) for m, p, _, _ in seen}
    assert len(operations) >= 5, operations
    server_errors = [(m, p, s) for m, p, s, _ in seen if s >= 500]
    assert not server_errors, server_errors
    assert requests.get(f"{cpu_stack.urls[server]}/health", timeout=10).status_code == 200
    report(f"{server}: fuzz requests sent", len(seen))
    report(f"{server}: operations", len(operations))
    report(f"{server}: statuses seen", dict(sorted(Counter(s for _, _, s, _ in seen).items())))


@pytest.mark.parametrize("server", SERVERS)
def test_fuzz_every_status_is_documented(
    fuzz_results: dict[str, list[tuple[str, str, int, list[str]]]], server: str
) -> None:
    undocumented = sorted({(m, p, s) for m, p, s, doc in fuzz_results[server]
                           if str(s) not in doc and f"{str(s)[0]}XX" not in doc and "default" not in doc})
    assert not undocumented, undocumented


def _routes(base: str, headers: dict[str, str]) -> list[tuple[str, str]]:
    spec = requests.get(f"{base}/openapi.json", headers=headers, timeout=30).json()
    routes = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]
    return [*routes, ("GET", "/openapi.json"), ("GET", "/docs")]


@pytest.mark.parametrize("server", SERVERS)
def test_every_route_but_health_needs_the_key(cpu_stack: Stack, server: str, report: Callable[..., None]) -> None:
    base = cpu_stack.urls[server]
    routes = _routes(base, _auth(cpu_stack))
    assert any(p == "/health" for _, p in routes)
    checked = 0
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": cpu_stack.api_key}):
            resp = requests.request(method, base + path, headers=headers, json={}, timeout=30)
            if path in PUBLIC:
                assert resp.status_code == 200, (method, path, resp.status_code)
            else:
                assert resp.status_code == 401, (method, path, headers, resp.status_code)
                assert resp.headers.get("WWW-Authenticate") == "Bearer"
            checked += 1
        ok = requests.request(method, base + path, headers=_auth(cpu_stack), json={}, timeout=30)
        assert ok.status_code != 401, (method, path)
        assert ok.status_code < 500, (method, path, ok.status_code)
        checked += 1
    report(f"{server}: route x credential checks", checked)


def test_keys_never_appear_in_logs_info_metrics_or_ps(cpu_stack: Stack) -> None:
    import psutil

    for name in SERVERS:
        base = cpu_stack.urls[name]
        for path in ("/info", "/metrics", "/v1/models", "/openapi.json"):
            body = requests.get(base + path, headers=_auth(cpu_stack), timeout=30).text
            assert cpu_stack.api_key not in body, f"key in {name}{path}"
        assert cpu_stack.api_key not in cpu_stack.log(name)
    for path in cpu_stack.state_dir.iterdir():
        assert cpu_stack.api_key not in path.read_text(errors="replace"), f"key in {path}"
    # Supervised servers get the key in their environment, not on a command line every local user can read.
    for row in cpu_stack.status():
        assert cpu_stack.api_key not in " ".join(psutil.Process(row["pid"]).cmdline())
