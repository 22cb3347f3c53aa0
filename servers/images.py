"""``ImageInput`` decoding with the source and size checks below (no torch, no FastAPI).

An ``ImageInput`` is one of:

* a data URI (``data:image/png;base64,...``) or a bare base64 string;
* ``{"base64": "..."}``;
* ``{"path": "..."}``: only inside one of the ``--image-root`` directories. Paths with a ``..`` component
  are refused outright; the rest are resolved (symlinks followed) and must still lie inside a root, so a
  symlink pointing out of the root is refused too;
* ``{"url": "http(s)://..."}``: only with ``--allow-url-images``. Every hop (the first request and each
  redirect) is resolved through DNS and refused when any address is loopback, private, link-local,
  multicast, reserved or unspecified; the connection then goes to the checked address (no second DNS
  lookup an attacker could answer differently). The download is capped in bytes and seconds.

The bytes are then checked before the model sees them: size cap, format allow-list, and a pixel bound read
from the header before the pixels are decoded (a decompression bomb never allocates its pixels); a truncated
file is refused instead of being padded with grey.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import os
import socket
import ssl
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from PIL import Image

from servers.errors import InvalidRequestError, RequestTooLargeError, ServingError
from servers.settings import ServerSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolver(host, port) -> addresses``; injectable so tests need no DNS.
Resolver = Callable[[str, int], list[str]]

#: Formats a photo or a rendered page comes in. Anything else (EPS runs Ghostscript, ICNS, PSD ...) is refused.
DEFAULT_IMAGE_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
MAX_REDIRECTS = 5
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


class ImageRefusedError(ServingError):
    """The image source is not allowed by the server's policy (path outside the roots, URL target) (403)."""

    status = 403
    type = "forbidden_input"


@dataclass(frozen=True)
class MultiModalInput:
    """One input: a text, an image, or both (fused).

    Attributes:
        text: The text, or None.
        image: An ``ImageInput`` as sent on the wire (checked by the server's :class:`ImagePolicy`), or a
            PIL image (trusted, in-process callers).
    """

    text: str | None = None
    image: Any | None = None


def is_public_address(address: IPAddress) -> bool:
    """True when ``address`` is a routable public address (the only targets URL images may reach)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidRequestError(f"image URL host {host!r} does not resolve") from exc
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class ImagePolicy:
    """What image sources are allowed and how large an image may be.

    Attributes:
        image_roots: Directories ``{"path"}`` inputs must lie in (resolved); empty: paths refused.
        allow_urls: Whether ``{"url"}`` inputs are fetched at all.
        max_image_bytes: Cap on an image's encoded size (any source).
        max_image_pixels: Cap on width * height, checked from the header before decoding.
        url_timeout_s: Total seconds one URL download (all redirects included) may take.
        formats: PIL format names accepted.
        address_allowed: Predicate on each resolved URL address; tests inject one that admits loopback.
        resolver: Host name -> addresses.
    """

    image_roots: tuple[Path, ...] = ()
    allow_urls: bool = False
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    url_timeout_s: float = 10.0
    formats: frozenset[str] = DEFAULT_IMAGE_FORMATS
    address_allowed: Callable[[IPAddress], bool] = field(default=is_public_address)
    resolver: Resolver = field(default=system_resolver)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ImagePolicy:
        """The policy of a server process (roots resolved once, at start)."""
        return cls(
            image_roots=tuple(Path(os.path.realpath(r)) for r in settings.image_root),
            allow_urls=settings.allow_url_images,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            url_timeout_s=settings.url_timeout_s,
        )


# ------------------------------------------------------------------------------------------------- sources
def _b64decode(data: str, what: str) -> bytes:
    cleaned = "".join(data.split())  # base64 wrapped at 76 columns is common
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"{what} is not valid base64") from exc


def _data_uri_bytes(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidRequestError("a data URI image must look like 'data:image/<type>;base64,<data>'")
    return _b64decode(payload, "the data URI payload")


def _check_size(n: int, policy: ImagePolicy) -> None:
    if n > policy.max_image_bytes:
        raise RequestTooLargeError(
            f"image is larger than {policy.max_image_bytes} bytes (--max-image-bytes)"
        )


def read_path(raw: str, policy: ImagePolicy) -> bytes:
    """Bytes of ``{"path": raw}``, allowed only inside an image root.

    Raises:
        ImageRefusedError: no roots configured, a ``..`` component, or the resolved file outside every root.
        InvalidRequestError: the file does not exist or is not a regular file.
    """
    if not policy.image_roots:
        raise ImageRefusedError("image paths are disabled on this server; start it with --image-root DIR")
    if not raw or "\x00" in raw:
        raise InvalidRequestError("image path is empty or contains a NUL byte")
    given = Path(raw)
    if ".." in given.parts:
        raise ImageRefusedError("image paths may not contain '..'")
    candidates = [given] if given.is_absolute() else [root / given for root in policy.image_roots]
    for candidate in candidates:
        # realpath follows every symlink, so the check below sees where the file really is.
        real = Path(os.path.realpath(candidate))
        if not any(real == root or real.is_relative_to(root) for root in policy.image_roots):
            raise ImageRefusedError("image path is outside the server's --image-root directories")
        if real.is_file():
            # Open the resolved path, not the given one, so a symlink swapped in between cannot redirect us.
            with real.open("rb") as fh:
                _check_size(os.fstat(fh.fileno()).st_size, policy)
                return fh.read(policy.max_image_bytes + 1)
    raise InvalidRequestError(f"image path {raw!r} is not a file under the server's --image-root directories")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP connection to an address checked beforehand (the Host header keeps the name)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is still verified against the host name (SNI)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _checked_address(host: str, port: int, policy: ImagePolicy) -> str:
    try:
        addresses = policy.resolver(host, port)
    except ServingError:
        raise
    except OSError as exc:
        raise InvalidRequestError(f"image URL host {host!r} does not resolve") from exc
    if not addresses:
        raise InvalidRequestError(f"image URL host {host!r} does not resolve")
    for text in addresses:
        # Refuse when ANY address is internal: a name with one public and one private address could be
        # answered either way by the OS later.
        if not policy.address_allowed(ipaddress.ip_address(text.split("%", 1)[0])):
            raise ImageRefusedError(
                "image URL points to a loopback, private or link-local address; such targets are refused"
            )
    return addresses[0]


def fetch_url(url: str, policy: ImagePolicy) -> bytes:
    """Download an image URL under the policy (every redirect re-checked; byte and time caps).

    Raises:
        ImageRefusedError: URLs are off, or a hop targets an internal address.
        InvalidRequestError: not http(s), an HTTP error status, too many redirects, a timeout.
        RequestTooLargeError: the body exceeds ``max_image_bytes``.
    """
    if not policy.allow_urls:
        raise ImageRefusedError("image URLs are disabled on this server; start it with --allow-url-images")
    deadline = time.monotonic() + policy.url_timeout_s
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequestError("image URL must be an absolute http:// or https:// URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise InvalidRequestError("image URL has an invalid port") from exc
        host = parts.hostname
        address = _checked_address(host, port, policy)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InvalidRequestError(f"image URL download took longer than {policy.url_timeout_s}s")
        cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        conn = cls(host, port, address, remaining)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"User-Agent": "rag-plugins-image-fetch", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in _REDIRECT_CODES:
                location = response.getheader("Location")
                if not location:
                    raise InvalidRequestError("image URL redirected without a Location")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise InvalidRequestError(f"image URL answered HTTP {response.status}")
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit():
                _check_size(int(length), policy)
            chunks: list[bytes] = []
            received = 0
            while True:
                if time.monotonic() > deadline:
                    raise InvalidRequestError(f"image URL download took longer than {policy.url_timeout_s}s")
                if conn.sock is not None:  # the time cap covers a server that trickles bytes slowly
                    conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                _check_size(received, policy)
                chunks.append(chunk)
            return b"".join(chunks)
        except TimeoutError as exc:
            raise InvalidRequestError(f"image URL download took longer than {policy.url_timeout_s}s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise InvalidRequestError(f"image URL could not be fetched ({type(exc).__name__})") from exc
        finally:
            conn.close()
    raise InvalidRequestError(f"image URL redirected more than {MAX_REDIRECTS} times")


def image_bytes(value: Any, policy: ImagePolicy) -> bytes:
    """The encoded bytes of one ``ImageInput`` (not yet decoded).

    Args:
        value: A data URI / base64 string, or a mapping with exactly one of ``base64``, ``path``, ``url``.
        policy: The server's image policy.
    """
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("data:"):
            data = _data_uri_bytes(stripped)
        else:
            if len(stripped) > policy.max_image_bytes * 4 // 3 + 4:
                _check_size(len(stripped) * 3 // 4, policy)
            data = _b64decode(stripped, "image string (expected a data URI or base64)")
    elif isinstance(value, dict):
        keys = [k for k in ("base64", "path", "url") if value.get(k) is not None]
        if len(keys) != 1 or not isinstance(value[keys[0]], str):
            raise InvalidRequestError('an image object needs exactly one of "base64", "path" or "url" (a string)')
        key = keys[0]
        if key == "base64":
            data = _data_uri_bytes(value[key]) if value[key].startswith("data:") else _b64decode(value[key], "base64")
        elif key == "path":
            data = read_path(value[key], policy)
        else:
            data = fetch_url(value[key], policy)
    else:
        raise InvalidRequestError("an image must be a data URI, a base64 string, or {base64|path|url}")
    _check_size(len(data), policy)
    return data


# ------------------------------------------------------------------------------------------------ decoding
def decode_image(data: bytes, policy: ImagePolicy) -> Image.Image:
    """Decode and check encoded image bytes; return a fully loaded RGB image.

    Raises:
        InvalidRequestError: not an image, a format outside the allow-list, a truncated or corrupt file.
        RequestTooLargeError: more pixels than ``max_image_pixels`` (read from the header, before decoding).
    """
    _check_size(len(data), policy)
    try:
        with warnings.catch_warnings():
            # PIL warns (and raises above 2x) on its own MAX_IMAGE_PIXELS; our bound below is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(policy.formats))
    except Image.DecompressionBombError as exc:
        raise RequestTooLargeError(
            f"image has more pixels than this server accepts ({policy.max_image_pixels}, --max-image-pixels)"
        ) from exc
    except Exception as exc:  # PIL raises UnidentifiedImageError, SyntaxError, ValueError ... for junk
        allowed = ", ".join(sorted(policy.formats))
        raise InvalidRequestError(f"data is not a supported image (formats: {allowed})") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidRequestError("image has no pixels")
    if width * height > policy.max_image_pixels:
        raise RequestTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over this server's limit of "
            f"{policy.max_image_pixels} (--max-image-pixels)"
        )
    try:
        image.load()  # raises OSError on truncated data (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
        rgb = image.convert("RGB")
    except Exception as exc:
        raise InvalidRequestError("image data is truncated or corrupt") from exc
    return rgb


def load_image(value: Any, policy: ImagePolicy) -> Image.Image:
    """``ImageInput`` -> checked RGB image (blocking: run it off the event loop)."""
    return decode_image(image_bytes(value, policy), policy)


def load_images(values: Sequence[Any], policy: ImagePolicy) -> list[Image.Image]:
    """Decode several inputs; the error of the first bad one names its index."""
    out: list[Image.Image] = []
    for i, value in enumerate(values):
        try:
            out.append(load_image(value, policy))
        except ServingError as exc:
            exc.message = f"image {i}: {exc.message}"
            exc.args = (exc.message,)
            raise
    return out
