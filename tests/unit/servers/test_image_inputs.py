"""ImageInput decoding and its security rules (servers.images), offline: local files and a loopback server."""

from __future__ import annotations

import base64
import http.server
import io
import ipaddress
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from servers.errors import InvalidRequestError, RequestTooLargeError
from servers.images import (
    ImagePolicy,
    ImageRefusedError,
    decode_image,
    is_public_address,
    load_image,
    load_images,
)
from servers.settings import ServerSettings


def png_bytes(size: tuple[int, int] = (20, 10), color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    # Noise, so the entropy-coded data (not the header) is most of the file and cutting it truncates pixels.
    buf = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buf, format="JPEG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """An image root holding a.png, and a sibling directory outside it holding secret.png."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a.png").write_bytes(png_bytes())
    (root / "sub").mkdir()
    (root / "sub" / "b.png").write_bytes(png_bytes((8, 8)))
    (outside / "secret.png").write_bytes(png_bytes())
    return root, outside


# ----------------------------------------------------------------------------------------------- inline data
def test_data_uri_bare_base64_and_base64_object() -> None:
    policy = ImagePolicy()
    data = png_bytes((20, 10))
    for value in (f"data:image/png;base64,{b64(data)}", b64(data), {"base64": b64(data)}):
        image = load_image(value, policy)
        assert image.size == (20, 10)
        assert image.mode == "RGB"


def test_bad_base64_and_object_shapes_are_400() -> None:
    policy = ImagePolicy()
    for value in ("not base64 !!", "data:image/png,rawbytes", {"base64": "x", "url": "http://a"}, {}, 42):
        with pytest.raises(InvalidRequestError):
            load_image(value, policy)


def test_non_image_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="not a supported image"):
        load_image(b64(b"hello, this is plainly text and not an image at all"), ImagePolicy())


def test_format_outside_allow_list_is_refused() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PPM")
    with pytest.raises(InvalidRequestError, match="not a supported image"):
        decode_image(buf.getvalue(), ImagePolicy())


def test_truncated_jpeg_is_refused() -> None:
    data = jpeg_bytes((128, 96))
    with pytest.raises(InvalidRequestError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], ImagePolicy())


def test_decompression_bomb_refused_from_header() -> None:
    # A 20000x20000 PNG of one colour compresses to a few hundred kB; the bound is checked before decoding.
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    with pytest.raises(RequestTooLargeError, match="pixels"):
        decode_image(buf.getvalue(), ImagePolicy(max_image_pixels=10_000_000))


def test_byte_cap() -> None:
    with pytest.raises(RequestTooLargeError, match="max-image-bytes"):
        load_image(b64(png_bytes((50, 50))), ImagePolicy(max_image_bytes=50))


def test_error_names_the_bad_index() -> None:
    with pytest.raises(InvalidRequestError, match="image 1:"):
        load_images([b64(png_bytes()), "@@@"], ImagePolicy())


# ------------------------------------------------------------------------------------------------------ paths
def test_paths_refused_without_roots(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    with pytest.raises(ImageRefusedError, match="image-root"):
        load_image({"path": str(root / "a.png")}, ImagePolicy())


def test_paths_inside_root_absolute_and_relative(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    policy = ImagePolicy(image_roots=(root.resolve(),))
    assert load_image({"path": str(root / "a.png")}, policy).size == (20, 10)
    assert load_image({"path": "sub/b.png"}, policy).size == (8, 8)


def test_path_outside_root_is_refused(roots: tuple[Path, Path]) -> None:
    root, outside = roots
    policy = ImagePolicy(image_roots=(root.resolve(),))
    with pytest.raises(ImageRefusedError, match="outside"):
        load_image({"path": str(outside / "secret.png")}, policy)
    with pytest.raises(ImageRefusedError, match="outside"):
        load_image({"path": "/etc/passwd"}, policy)


def test_dotdot_is_refused(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    policy = ImagePolicy(image_roots=(root.resolve(),))
    for raw in ("../outside/secret.png", str(root / ".." / "outside" / "secret.png"), "sub/../a.png"):
        with pytest.raises(ImageRefusedError, match=r"\.\."):
            load_image({"path": raw}, policy)


def test_symlink_escape_is_refused_and_inner_symlink_allowed(roots: tuple[Path, Path]) -> None:
    root, outside = roots
    os.symlink(outside / "secret.png", root / "link.png")
    os.symlink(outside, root / "linkdir")
    os.symlink(root / "a.png", root / "inner.png")
    policy = ImagePolicy(image_roots=(root.resolve(),))
    for raw in ("link.png", "linkdir/secret.png", str(root / "link.png")):
        with pytest.raises(ImageRefusedError, match="outside"):
            load_image({"path": raw}, policy)
    assert load_image({"path": "inner.png"}, policy).size == (20, 10)


def test_missing_file_is_400(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    with pytest.raises(InvalidRequestError, match="not a file"):
        load_image({"path": "nope.png"}, ImagePolicy(image_roots=(root.resolve(),)))


# ------------------------------------------------------------------------------------------------------- URLs
class _Handler(http.server.BaseHTTPRequestHandler):
    image = png_bytes((12, 6))

    def do_GET(self) -> None:
        if self.path == "/img.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        elif self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.partition("?to=")[2] or "/img.png")
            self.end_headers()
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the streaming cap must stop it
            self.wfile.write(b"x" * 300_000)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _loopback_ok(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_loopback


def test_urls_refused_when_off(http_base: str) -> None:
    with pytest.raises(ImageRefusedError, match="allow-url-images"):
        load_image({"url": http_base + "/img.png"}, ImagePolicy())


def test_internal_targets_refused(http_base: str) -> None:
    policy = ImagePolicy(allow_urls=True, url_timeout_s=2)
    for url in (
        http_base + "/img.png",
        "http://localhost:1/x.png",
        "http://10.1.2.3/x.png",
        "http://192.168.0.1/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://0.0.0.0/x.png",
    ):
        with pytest.raises(ImageRefusedError, match="loopback, private or link-local"):
            load_image({"url": url}, policy)


def test_name_resolving_to_private_is_refused() -> None:
    policy = ImagePolicy(allow_urls=True, resolver=lambda host, port: ["93.184.215.14", "10.0.0.5"])
    with pytest.raises(ImageRefusedError):
        load_image({"url": "http://example.test/x.png"}, policy)


def test_public_address_predicate() -> None:
    assert is_public_address(ipaddress.ip_address("93.184.215.14"))
    for text in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.1.1", "::1", "fe80::1", "fc00::1",
                 "::ffff:10.0.0.1", "0.0.0.0", "100.64.0.1"):
        assert not is_public_address(ipaddress.ip_address(text)), text


def test_fetch_when_loopback_explicitly_allowed(http_base: str) -> None:
    policy = ImagePolicy(allow_urls=True, address_allowed=_loopback_ok)
    assert load_image({"url": http_base + "/img.png"}, policy).size == (12, 6)
    assert load_image({"url": http_base + "/redirect"}, policy).size == (12, 6)


def test_redirect_to_internal_target_is_refused(http_base: str) -> None:
    # The first hop is allowed (loopback admitted for this test); the redirect goes to a private address.
    policy = ImagePolicy(allow_urls=True, address_allowed=_loopback_ok, url_timeout_s=2)
    with pytest.raises(ImageRefusedError):
        load_image({"url": http_base + "/redirect?to=http://10.0.0.1/x.png"}, policy)
    with pytest.raises(ImageRefusedError):
        load_image({"url": http_base + "/redirect?to=http://169.254.169.254/"}, policy)


def test_url_byte_cap_and_errors(http_base: str) -> None:
    policy = ImagePolicy(allow_urls=True, address_allowed=_loopback_ok, max_image_bytes=100_000)
    with pytest.raises(RequestTooLargeError):
        load_image({"url": http_base + "/big"}, policy)
    with pytest.raises(InvalidRequestError, match="HTTP 404"):
        load_image({"url": http_base + "/missing"}, policy)
    with pytest.raises(InvalidRequestError, match="http"):
        load_image({"url": "file:///etc/passwd"}, policy)


def test_url_time_cap() -> None:
    # A listening socket that never answers: the download must give up after url_timeout_s.
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        policy = ImagePolicy(allow_urls=True, address_allowed=_loopback_ok, url_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(InvalidRequestError, match="longer than"):
            load_image({"url": f"http://127.0.0.1:{port}/x.png"}, policy)
        assert time.monotonic() - started < 3


def test_policy_from_settings(tmp_path: Path) -> None:
    settings = ServerSettings(kind="mm-embed", model="m", image_root=(str(tmp_path),), allow_url_images=True)
    policy = ImagePolicy.from_settings(settings)
    assert policy.image_roots == (tmp_path.resolve(),)
    assert policy.allow_urls
    assert not policy.address_allowed(ipaddress.ip_address("127.0.0.1"))
