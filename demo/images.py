"""Simple images the demo generates itself (shapes and colours with PIL), each with a caption."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

#: (file name, caption, shape, fill colour) of the generated images.
DEMO_IMAGES: tuple[tuple[str, str, str, str], ...] = (
    ("red-circle.png", "a red circle on a white background", "circle", "red"),
    ("blue-square.png", "a blue square on a white background", "square", "blue"),
    ("green-triangle.png", "a green triangle on a white background", "triangle", "green"),
    ("orange-stripes.png", "orange horizontal stripes on a white background", "stripes", "orange"),
    ("purple-cross.png", "a purple cross on a white background", "cross", "purple"),
)
IMAGE_QUERIES = ("a red circle", "a blue square", "stripes")


def draw_shape(shape: str, colour: str, size: int = 224) -> Image.Image:
    """One RGB image of ``shape`` filled with ``colour`` on white."""
    image = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(image)
    m = size // 6
    if shape == "circle":
        d.ellipse((m, m, size - m, size - m), fill=colour)
    elif shape == "square":
        d.rectangle((m, m, size - m, size - m), fill=colour)
    elif shape == "triangle":
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=colour)
    elif shape == "stripes":
        for y in range(m, size - m, 30):
            d.rectangle((m, y, size - m, y + 10), fill=colour)
    elif shape == "cross":
        w = size // 8
        d.rectangle((size // 2 - w, m, size // 2 + w, size - m), fill=colour)
        d.rectangle((m, size // 2 - w, size - m, size // 2 + w), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image


def write_demo_images(target: Path) -> list[tuple[Path, str]]:
    """Write the demo images into ``target``; returns (path, caption) pairs."""
    target.mkdir(parents=True, exist_ok=True)
    out: list[tuple[Path, str]] = []
    for name, caption, shape, colour in DEMO_IMAGES:
        path = target / name
        draw_shape(shape, colour).save(path)
        out.append((path, caption))
    return out
