"""The wheel ships the three import packages and no test support; a fresh venv imports every public module.

The fresh venv (``python -m venv``, no system site-packages) gets only the wheel, installed with
``--no-deps --no-index``; the third-party dependencies come from the test interpreter's site-packages
through a ``.pth`` file appended after the venv's own, so every module of ours is the wheel's copy (checked
by ``__file__``) and nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("rag_plugins", "servers", "integrations")
TEST_SUPPORT = ("tests", "testkit", "servers/testing", "bench", "demo", "notebooks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy: setuptools would reuse (and write) build/ and *.egg-info in the checkout.
    source = tmp_path_factory.mktemp("source") / "rag-plugins"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "notebooks"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("rag_plugins-*.whl")
    return built


def _modules(names: list[str]) -> list[str]:
    mods = []
    for name in names:
        if not name.endswith(".py") or not name.startswith(PACKAGES):
            continue
        parts = name[:-3].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        mods.append(".".join(parts))
    return sorted(mods)


def test_wheel_has_no_test_support(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith(TEST_SUPPORT)], "test support in the wheel"
    tops = {n.split("/")[0] for n in names if not n.startswith("rag_plugins-")}
    assert tops == set(PACKAGES)
    for package in PACKAGES:
        assert f"{package}/py.typed" in names


def test_fresh_venv_imports_every_public_module(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(purelib), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    # Dependencies only: the test interpreter's site-packages, after the venv's own (so ours win).
    (purelib / "zz_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    modules = _modules(zipfile.ZipFile(wheel).namelist())
    script = (
        "import importlib, json, sys\n"
        f"mods = {modules!r}\n"
        "files = {m: importlib.import_module(m).__file__ for m in mods}\n"
        "print(json.dumps(files))\n"
    )
    result = subprocess.run([str(python), "-I", "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    files = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(files) == set(modules)
    assert len(modules) > 40
    outside = {m: f for m, f in files.items() if not str(f).startswith(str(purelib))}
    assert outside == {}, f"modules not imported from the wheel: {outside}"
