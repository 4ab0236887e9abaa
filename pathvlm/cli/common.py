"""Arguments and output helpers shared by several commands."""
from __future__ import annotations

import json
import sys

DEFAULT_MODEL = "pathclip-nano"


def add_model_arg(p, default: str | None = DEFAULT_MODEL, image_only_ok: bool = False) -> None:
    kinds = (" Image-only encoders (UNI, Virchow2, H-optimus, Prov-GigaPath, Phikon: a timm or ViT/DINOv2 folder "
             "or hf-hub id) work here too." if image_only_ok else "")
    p.add_argument(
        "--model", "-m", default=default,
        help="model source: pathclip-nano, hf-hub:org/repo, hf:org/repo, local-dir:/path, a folder (open_clip, "
             "CLIPModel, CONCH, KEEP), ARCH:TAG or ARCH:/path/file.pt (see docs/models.md)." + kinds +
             f" Default: {default or 'the model that built the index'}",
    )
    p.add_argument("--text-tower", default=None, metavar="DIR",
                   help="local copy of the hub BERT repo an open_clip config names as its text tower (BiomedCLIP, "
                        "QuiltNet-B-16-PMB), when it is not in the Hugging Face cache; its config.json is enough")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")



def warn(text: str) -> None:
    """A warning for the user on stderr (stdout stays the command's output)."""
    print(f"warning: {text}", file=sys.stderr)


def domain_note(verdict: dict | None) -> None:
    """The plain line a command prints when its image lies outside the model's training domain."""
    if verdict and verdict.get("warning"):
        print(f"note: {verdict['warning']}")
