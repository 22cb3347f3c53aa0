"""deploy/k8s: every manifest validates against the Kubernetes schemas (offline) and keeps the serving contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

K8S_DIR = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
#: Schemas shipped inside the kubernetes-validate wheel (no network).
KUBERNETES_VERSION = "1.30.0"


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs += [(f"{path.name}:{d['kind']}/{d['metadata']['name']}", d)
                 for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = documents()


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[n for n, _ in DOCS])
def test_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises ValidationError


def test_every_model_server_has_gpu_readiness_drain_and_a_service() -> None:
    deployments = {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == "Service"}
    assert set(deployments) == {"rag-text", "rag-images", "rag-rerank"}
    for name, dep in deployments.items():
        spec = dep["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        assert "preStop" in container["lifecycle"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert spec["terminationGracePeriodSeconds"] > float(env["RAG_SERVE_DRAIN_GRACE_S"]) + 5
        assert dep["spec"]["replicas"] >= 1
        port = container["ports"][0]["containerPort"]
        assert env["RAG_SERVE_PORT"] == str(port)
        service = services[name]
        assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
