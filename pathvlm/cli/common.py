"""Arguments and output helpers shared by several commands."""
from __future__ import annotations

import json
import sys

DEFAULT_MODEL = "pathclip-nano"


def add_model_arg(p, default: str | None = DEFAULT_MODEL) -> None:
    p.add_argument(
        "--model", "-m", default=default,
        help="model source: pathclip-nano, hf-hub:org/repo, hf:org/repo, local-dir:/path, a folder, or ARCH:TAG "
             f"(default: {default or 'the model that built the index'})",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")

