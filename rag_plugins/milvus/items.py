"""``StoreItem``: one row of the multi-vector collection before embedding, and its deterministic id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from rag_plugins.milvus.embedders import ImageLike

#: Separator of the parts hashed into an id (a control character no doc id or text normally holds).
_SEP = "\x1f"
#: Max length of the VARCHAR primary key (explicit ids longer than this are hashed).
ID_MAX_LENGTH = 128


def _image_fingerprint(image: ImageLike | None) -> str:
    """A stable string for an image: its path/URL, or a hash of its bytes."""
    if image is None:
        return ""
    if isinstance(image, (str, Path)):
        return str(image)
    if isinstance(image, bytes):
        return "sha256:" + hashlib.sha256(image).hexdigest()
    if isinstance(image, BytesIO):
        return "sha256:" + hashlib.sha256(image.getvalue()).hexdigest()
    tobytes = getattr(image, "tobytes", None)  # PIL image
    if callable(tobytes):
        return "sha256:" + hashlib.sha256(tobytes()).hexdigest()
    raise TypeError(f"unsupported image type {type(image).__name__}")


def make_id(*parts: str) -> str:
    """Deterministic primary key: the first 32 hex digits of sha256 over the parts."""
    return hashlib.sha256(_SEP.join(parts).encode("utf-8")).hexdigest()[:32]


def key_for_id(explicit_id: str) -> str:
    """The primary key of an explicit id (a node id): itself, or its hash when over :data:`ID_MAX_LENGTH`."""
    return explicit_id if len(explicit_id) <= ID_MAX_LENGTH else make_id("id", explicit_id)


@dataclass
class StoreItem:
    """One text chunk, image, table, ... to store.

    ``text_vec`` is embedded from ``text`` (or, when there is none, ``caption``) by the text model;
    ``image_vec`` from ``image`` by the multimodal model, or for items without an image from ``text`` by the
    multimodal model's text side. An item needs a text, a caption or an image.

    Attributes:
        text: Chunk text (OCR / table text for images).
        image: The image: a path, URL, bytes, ``BytesIO`` or PIL image.
        doc_id: Source document id (``delete_doc`` removes all its items).
        chunk_id: Id of the chunk inside its document.
        modality: ``text``, ``image``, ``table``, ... (default: ``image`` when there is an image).
        uri: Where the image lives (default: ``image`` when it is a path or URL).
        page: Page number (-1: none).
        caption: Image caption.
        meta: Any JSON-serializable metadata.
        id: Primary key; None derives one (see :attr:`key`).
    """

    text: str = ""
    image: ImageLike | None = None
    doc_id: str = ""
    chunk_id: str = ""
    modality: str = ""
    uri: str = ""
    page: int = -1
    caption: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def __post_init__(self) -> None:
        if not self.modality:
            self.modality = "image" if self.image is not None else "text"
        if not self.uri and isinstance(self.image, (str, Path)) and not str(self.image).startswith("data:"):
            self.uri = str(self.image)
        if not (self.text or self.caption or self.image is not None):
            raise ValueError("a StoreItem needs a text, a caption or an image")

    @property
    def key(self) -> str:
        """The primary key, deterministic so that re-ingesting the same item overwrites it.

        An explicit ``id`` wins (hashed when longer than :data:`ID_MAX_LENGTH`); else ``doc_id`` +
        ``chunk_id`` when a chunk id is set; else ``doc_id`` + modality + content (text, caption, image).
        """
        if self.id:
            return key_for_id(self.id)
        if self.chunk_id:
            return make_id("chunk", self.doc_id, self.chunk_id)
        return make_id("content", self.doc_id, self.modality, self.text, self.caption,
                       _image_fingerprint(self.image))

    @property
    def text_for_text_vec(self) -> str:
        """What the text model embeds: the text, else the caption ("" = no ``text_vec``)."""
        return self.text or self.caption
