"""Security and bad input on a real ``rag-serve mm-embed``: each is a 4xx with a clear message, and the
server stays healthy after it."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.e2e.mm_fixtures import MM_MAX_BODY_BYTES, png_bytes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def truncated_jpeg() -> str:
    buf = io.BytesIO()
    Image.frombytes("RGB", (128, 96), os.urandom(128 * 96 * 3)).save(buf, format="JPEG")
    data = buf.getvalue()
    return b64(data[: len(data) // 2])


def bomb_png() -> str:
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG")  # 100 MP, a few kB compressed
    return b64(buf.getvalue())


def expect(base: str, body: dict[str, object], status: int, fragment: str, route: str = "/embed_image") -> None:
    r = requests.post(base + route, json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"], error
    assert requests.get(base + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("image", "status", "fragment"),
    [
        ({"path": "../outside/secret.png"}, 403, ".."),
        ({"path": "escape.png"}, 403, "outside"),
        ({"path": "/etc/hostname"}, 403, "outside"),
        ({"url": "http://127.0.0.1:9/x.png"}, 403, "loopback, private or link-local"),
        ({"url": "http://10.0.0.1/x.png"}, 403, "loopback, private or link-local"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, 403, "loopback, private or link-local"),
        ({"url": "http://[::1]:9/x.png"}, 403, "loopback, private or link-local"),
        ("bm90IGFuIGltYWdlIGF0IGFsbA==", 400, "not a supported image"),
        ("%%%", 400, "base64"),
    ],
)
def test_refused_sources_and_data(mm_server: str, image: object, status: int, fragment: str) -> None:
    expect(mm_server, {"images": [image]}, status, fragment)


def test_truncated_jpeg_and_bomb(mm_server: str) -> None:
    expect(mm_server, {"images": [truncated_jpeg()]}, 400, "truncated")
    expect(mm_server, {"images": [bomb_png()]}, 413, "pixels")


def test_paths_and_urls_off_by_default(mm_server_no_urls: str, mm_dirs: tuple[Path, Path]) -> None:
    expect(mm_server_no_urls, {"images": [{"url": "https://example.com/a.png"}]}, 403, "--allow-url-images")
    expect(mm_server_no_urls, {"images": [{"path": str(mm_dirs[0] / "ok.png")}]}, 403, "--image-root")


def test_shape_errors(mm_server: str) -> None:
    ok = b64(png_bytes((20, 20)))
    expect(mm_server, {"images": [ok], "texts": ["a", "b"]}, 422, "texts has 2 items")
    expect(mm_server, {"images": [{"path": "a", "url": "b"}]}, 422, "exactly one")
    expect(mm_server, {"images": []}, 422, "images")
    expect(mm_server, {"input": [{"text": ""}]}, 422, "text", route="/v1/embeddings")
    expect(mm_server, {"images": [ok], "dimensions": 4096}, 400, "dimensions")
    # A text smuggling an image placeholder would be read as image positions: refused, alone or fused.
    expect(mm_server, {"texts": ["see <|image_pad|> here"]}, 400, "vision special tokens", route="/embed")
    expect(mm_server, {"images": [ok], "texts": ["<|vision_start|>"]}, 400, "vision special tokens")


def test_body_over_cap(mm_server: str) -> None:
    big = "A" * (MM_MAX_BODY_BYTES + 10)
    expect(mm_server, {"images": [big]}, 413, "max-body-bytes")
