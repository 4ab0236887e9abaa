"""Close gradio's file-path hole for an app mounted with ``gr.mount_gradio_app`` (gradio 6).

A gradio request names its files with ``FileData`` objects (``{"path": ..., "meta": {"_type":
"gradio.FileData"}}``), inside an input or nested in a chat history. gradio copies such a file into
its cache and hands back a download URL, after ``processing_utils._check_allowed`` has checked that
an *input* file lies in the upload cache. That check returns early unless ``blocks.has_launched``,
which only ``Blocks.launch()`` sets: a mounted app skipped it, so any server file could be read
(issue 14). Two layers close it:

1. :func:`secure_blocks` sets ``has_launched`` as ``launch()`` does, so gradio's own check runs.
2. It also wraps ``blocks.preprocess_data`` (the one place every route, queue join, ``/call`` and
   ``/run``, passes inputs through before gradio touches a file) with :func:`check_file_references`,
   which refuses what gradio's check misses even after launch: a chatbot "component" message whose
   value names a path (gradio preprocesses it without the check, and allows the working directory
   and temp dir), file objects without ``meta`` (an Image input accepts them unchecked), and URLs
   (gradio would fetch them). Every file reference must resolve inside gradio's upload cache.

The refusal is one fixed message whatever the path, checked before the file system is touched
beyond resolving the path, so it tells nothing about which server files exist.
"""
from __future__ import annotations

import os
from pathlib import Path

REFUSED = ("refused: a file in this request is not an upload to this server. Upload the image "
           "(or use the web app); file paths, URLs and components inside chat messages are not accepted")


class FileReferenceRefused(ValueError):
    pass


def upload_root() -> Path:
    """gradio's upload cache (where ``/gradio_api/upload`` stores files), resolved."""
    from gradio.utils import get_upload_folder

    return Path(os.path.realpath(get_upload_folder()))


def _inside(path: str, root: Path) -> bool:
    if not isinstance(path, str) or not path or "\x00" in path or "://" in path:
        return False
    try:
        resolved = Path(os.path.realpath(path))
    except (OSError, ValueError):
        return False
    return resolved != root and resolved.is_relative_to(root)


def check_file_references(value, root: Path, _depth: int = 0) -> None:
    """Raise :class:`FileReferenceRefused` if ``value`` (an input payload) names a file outside ``root``,
    a URL, or a chat "component" message. Any dict with a ``path`` key, or FileData ``meta``, is a file
    reference, and its path must resolve inside ``root``."""
    if _depth > 64:
        raise FileReferenceRefused("input nested too deeply")
    if isinstance(value, dict):
        if value.get("type") == "component" or "component" in value and "value" in value:
            raise FileReferenceRefused(REFUSED)
        meta = value.get("meta")
        is_file = "path" in value or (isinstance(meta, dict) and meta.get("_type") == "gradio.FileData")
        if is_file and not _inside(value.get("path"), root):  # gradio reads the path (its url is not used)
            raise FileReferenceRefused(REFUSED)
        for v in value.values():
            check_file_references(v, root, _depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_file_references(v, root, _depth + 1)


def secure_blocks(blocks) -> None:
    """Make a mounted gradio app enforce the file rules of a launched one, and stricter ones (see above)."""
    from gradio.exceptions import Error

    blocks.has_launched = True  # what Blocks.launch() sets: gradio's _check_allowed runs from now on
    root = upload_root()
    original = blocks.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call: bool = False):
        try:
            for value in inputs or []:
                check_file_references(value, root)
        except FileReferenceRefused as e:
            raise Error(str(e), print_exception=False) from None
        return await original(block_fn, inputs, state, explicit_call)

    blocks.preprocess_data = preprocess_data
    _self_test(root)


def _self_test(root: Path) -> None:
    """Refuse to serve if the checks do not hold on this gradio version (a loud failure, not a hole)."""
    for probe in ({"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
                  [{"role": "user", "content": [{"type": "file", "file": {"path": str(root / ".." / "x")}}]}],
                  {"type": "component", "component": "file", "value": {"path": str(root / "x")}}):
        try:
            check_file_references(probe, root)
        except FileReferenceRefused:
            continue
        raise RuntimeError("pathvlm serve: the gradio file-reference check did not refuse a probe; not serving")
