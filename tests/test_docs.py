"""The documentation matches the code (fast; no ../shared, no models trained).

- Every command and subcommand of ``pathvlm`` (walked from the real argparse tree, so new commands are
  checked without editing this file) has a section in docs/cli.md naming each of its options.
- Every eval task (``evals/tasks/*.yaml``) and task kind is in docs/evaluation.md; every source adapter,
  recipe field, training-config field, reward and serve setting is on its reference page.
- Every ``pathvlm ...`` line in a code block of README.md, CONTRIBUTING.md and docs/ parses with the real
  parser; ``python -m MODULE`` / ``python SCRIPT.py`` lines use only flags the script defines; repository
  paths named in those lines exist; the cheap README commands (help, models, tasks, eval --list, data
  sources) run.
- Every relative link and image in those files resolves, anchors included.

A failure lists everything that is missing, not just the first thing.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
DOC_FILES = [README, ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]
REPO_DIRS = ("data_recipes/", "train/", "evals/", "benchmarks/", "pathvlm/", "serve/", "tests/", "docs/")


# ----------------------------------------------------------------------------- markdown helpers
def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


FENCE = re.compile(r"^(```|~~~)([^\n]*)\n(.*?)^\1\s*$", re.M | re.S)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return [(m.group(2).strip().lower(), m.group(3)) for m in FENCE.finditer(text)]


def _blank(m: re.Match) -> str:
    return re.sub(r"[^\n]", " ", m.group(0))


def without_fences(text: str) -> str:
    """The text with fenced code blocks blanked, same length (a `# comment` in a block is not a heading)."""
    return FENCE.sub(_blank, text)


def without_code(text: str) -> str:
    """The text with fenced blocks and inline code spans blanked, same length (links in code are not links)."""
    return re.sub(r"`[^`\n]*`", _blank, without_fences(text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", without_fences(text), re.M):
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    out |= set(re.findall(r'<a\s+(?:name|id)="([^"]+)"', text))
    return out


def sections(text: str) -> dict[str, str]:
    """Heading text -> the text under it up to the next heading of the same or a higher level."""
    heads = [(m.start(), len(m.group(1)), m.group(2).strip()) for m in re.finditer(r"^(#{1,6})\s+(.+)$", without_fences(text), re.M)]
    out = {}
    for i, (start, level, title) in enumerate(heads):
        end = next((s for s, lv, _ in heads[i + 1:] if lv <= level), len(text))
        out[title] = text[start:end]
    return out


# ----------------------------------------------------------------------------- the CLI tree
def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def command_tree(parser=None, path=()) -> dict[tuple, argparse.ArgumentParser]:
    """Every command path with its parser: ('index', 'build') -> the parser of `pathvlm index build`."""
    from pathvlm.cli import make_parser

    parser = parser or make_parser()
    out = {}
    for name, sub in _subparsers(parser):
        out[path + (name,)] = sub
        out.update(command_tree(sub, path + (name,)))
    return out


def options_of(parser: argparse.ArgumentParser) -> list[str]:
    """What a reader must find documented: each option's longest spelling, and each positional's name."""
    out = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if a.option_strings:
            out.append(max(a.option_strings, key=len))
        else:
            out.append((a.metavar or a.dest).upper())
    return out


def test_every_command_and_option_is_in_the_cli_reference():
    text = read(DOCS / "cli.md")
    by_title = {re.sub(r"[`*]", "", t).strip(): body for t, body in sections(text).items()}
    from pathvlm.cli import make_parser

    missing = []
    for path, parser in {(): make_parser(), **command_tree()}.items():
        title = " ".join(("pathvlm",) + path)
        body = by_title.get(title)
        if body is None:
            missing.append(f"no section '## {title}' (or ###) in docs/cli.md")
            continue
        for opt in options_of(parser):
            pattern = re.escape(opt) if opt.startswith("-") else r"\b" + re.escape(opt) + r"\b"
            if not re.search(r"(?<![\w-])" + pattern + r"(?![\w-])", body, re.I if not opt.startswith("-") else 0):
                missing.append(f"{title}: {opt} is not described in its section of docs/cli.md")
    assert not missing, "undocumented command-line features:\n" + "\n".join(missing)


def test_the_command_tree_walker_sees_nested_commands():
    tree = command_tree()
    assert {("index",), ("index", "build"), ("train", "grpo"), ("data", "sources")} <= set(tree)
    assert "--precision" in options_of(tree[("index", "build")]) and "FOLDER" in options_of(tree[("index", "build")])


# ----------------------------------------------------------------------------- reference pages
def _mentioned(name: str, text: str) -> bool:
    return re.search(r"`[^`\n]*(?<![\w-])" + re.escape(name) + r"(?![\w-])[^`\n]*`", text) is not None


def reference_items():
    """(what, names, pages where they must be mentioned in backticks)."""
    from evals.tasks import KINDS, list_tasks
    from pathvlm.data.config import CurationConfig, RecipeConfig, SourceConfig, SplitConfig
    from pathvlm.data.sources import list_adapters
    from pathvlm.rewards import REWARDS
    from pathvlm.serving.config import ServeConfig, ServeLimits
    from train.clip.config import ClipTrainConfig
    from train.vlm.config import VLMTrainConfig

    names = lambda cls: [f.name for f in fields(cls)]  # noqa: E731
    return [
        ("eval task", list_tasks(), ["evaluation.md"]),
        ("eval task kind", list(KINDS), ["evaluation.md"]),
        ("source adapter", sorted(list_adapters()), ["data.md"]),
        ("recipe field", names(RecipeConfig) + names(SourceConfig) + names(CurationConfig) + names(SplitConfig),
         ["data.md"]),
        ("PathCLIP training field", names(ClipTrainConfig), ["training.md"]),
        ("reasoner training field", names(VLMTrainConfig), ["training.md"]),
        ("GRPO reward", sorted(REWARDS) + ["image_agreement"], ["training.md"]),
        ("serve setting", names(ServeConfig) + names(ServeLimits), ["serving.md", "serving-security.md"]),
    ]


def test_every_task_adapter_field_reward_and_setting_is_on_its_reference_page():
    missing = []
    for what, items, pages in reference_items():
        text = "\n".join(read(DOCS / p) for p in pages if (DOCS / p).exists())
        missing += [f"{what} `{n}` is not in docs/{' or docs/'.join(pages)}" for n in items if not _mentioned(n, text)]
    assert not missing, "undocumented:\n" + "\n".join(missing)


# ----------------------------------------------------------------------------- commands in code blocks
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}  # label other blocks (text, yaml, python, nginx, ...)


def shell_lines(text: str) -> list[str]:
    """Commands of the shell code blocks: continuations joined, comments and prompts dropped,
    pipelines and && chains split."""
    out = []
    for lang, body in code_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        body = re.sub(r"\\\n\s*", " ", body)
        for line in body.splitlines():
            line = line.strip()
            line = line[2:] if line.startswith("$ ") else line
            if not line or line.startswith("#"):
                continue
            try:
                lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
                lex.whitespace_split = True
                lex.commenters = "#"
                tokens = list(lex)
            except ValueError:
                tokens = line.split()
            cmd: list[str] = []
            for tok in tokens + [";"]:
                if tok in (";", "&&", "||", "|", "&"):
                    if cmd:
                        out.append(cmd)
                    cmd = []
                else:
                    cmd.append(tok)
    return out


def pathvlm_argv(tokens: list[str]) -> list[str] | None:
    """The pathvlm arguments of a command line (env assignments, `accelerate launch ... -m pathvlm`,
    `python -m pathvlm` and `.venv/bin/pathvlm` understood), or None if it does not run pathvlm."""
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    for i, t in enumerate(tokens):
        if t == "pathvlm" and i > 0 and tokens[i - 1] == "-m":
            return tokens[i + 1:]
        if i == 0 and (t == "pathvlm" or t.endswith("/pathvlm")):
            return tokens[1:]
    return None


def documented_commands():
    for path in DOC_FILES:
        if path.exists():
            for tokens in shell_lines(read(path)):
                yield path.relative_to(ROOT), tokens


def parse_error(argv: list[str]) -> str | None:
    from pathvlm.cli import make_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            make_parser().parse_args(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}"
    return None


def test_every_documented_pathvlm_command_parses():
    problems, n = [], 0
    for where, tokens in documented_commands():
        argv = pathvlm_argv(tokens)
        if argv is None:
            continue
        n += 1
        if (msg := parse_error(argv)) is not None:
            problems.append(f"{where}: `pathvlm {' '.join(argv)}`: {msg}")
    assert n >= 20, f"only {n} pathvlm command lines found in the docs: is the code-block reader broken?"
    assert not problems, "documented commands the parser rejects:\n" + "\n".join(problems)


def script_flags(path: Path) -> set[str]:
    """The option strings a script or module defines with add_argument (read with ast, not run)."""
    flags = set()
    for node in ast.walk(ast.parse(read(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return flags | {"-h", "--help"}


def script_of(tokens: list[str]) -> tuple[Path, list[str]] | None:
    """(source file, its arguments) for `python -m train.x ...` and `python benchmarks/x.py ...` lines."""
    if not tokens or not re.match(r"^(\S*/)?python3?$", tokens[0]):
        return None
    if len(tokens) > 2 and tokens[1] == "-m" and tokens[2] != "pathvlm":
        module = tokens[2]
        for cand in (ROOT / (module.replace(".", "/") + ".py"), ROOT / module.replace(".", "/") / "__main__.py"):
            if cand.exists():
                return cand, tokens[3:]
        return None
    if len(tokens) > 1 and tokens[1].endswith(".py") and not tokens[1].startswith("-"):
        return ROOT / tokens[1], tokens[2:]
    return None


def test_documented_scripts_exist_and_take_the_flags_shown():
    problems = []
    for where, tokens in documented_commands():
        found = script_of(tokens)
        if found is None:
            continue
        path, args = found
        if not path.exists():
            problems.append(f"{where}: {' '.join(tokens[:3])}: {path.relative_to(ROOT)} does not exist")
            continue
        if path.is_relative_to(ROOT / "tests"):
            continue  # pytest lines: their flags are pytest's
        defined = script_flags(path)
        for a in args:
            flag = a.split("=", 1)[0]
            if flag.startswith("--") and flag not in defined:
                problems.append(f"{where}: {path.relative_to(ROOT)} has no option {flag}")
    assert not problems, "\n".join(problems)


def test_repository_paths_in_documented_commands_exist():
    problems = []
    for where, tokens in documented_commands():
        for t in tokens:
            t = t.split("=", 1)[-1]
            if t.startswith(REPO_DIRS) and not any(c in t for c in "*{}$<>") and not (ROOT / t).exists():
                problems.append(f"{where}: {t} does not exist")
    assert not problems, "\n".join(sorted(set(problems)))


CHEAP = [["--help"], ["models"], ["tasks"], ["eval", "--list"], ["data", "sources"]]


def test_the_cheap_readme_commands_run(capsys):
    """The README's look-around commands run and print what the docs say they print."""
    from pathvlm.cli import main

    shown = [argv for _, tokens in documented_commands() if (argv := pathvlm_argv(tokens)) is not None]
    in_readme = [pathvlm_argv(t) for t in shell_lines(read(README)) if pathvlm_argv(t) is not None]
    to_run = [argv for argv in in_readme if argv in CHEAP or (argv[:1] == ["tasks"] and len(argv) == 2)]
    assert ["--help"] in shown and ["models"] in to_run and ["tasks"] in to_run, to_run
    for argv in to_run:
        try:
            rc = main(argv)
        except SystemExit as e:  # --help
            rc = e.code or 0
        out = capsys.readouterr().out
        assert rc == 0 and out.strip(), f"pathvlm {' '.join(argv)} failed or printed nothing"
        if argv == ["models"]:
            assert "pathclip-nano" in out and "pathvlm-nano" in out
        if argv == ["tasks"]:
            assert "lc25000_colon" in out


def test_the_console_script_answers_help():
    exe = Path(sys.executable).with_name("pathvlm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pathvlm"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "COMMAND" in out.stdout


def test_the_command_line_reader_understands_the_forms_used():
    text = ("```bash\nQUILT=/q pathvlm data build x.yaml \\\n  --out y   # note\n"
            "accelerate launch --config_file c.yaml -m pathvlm train clip --config r.yaml\n"
            "$ pathvlm --help | head\n```\n```python\npathvlm.chat()\n```\n")
    argvs = [pathvlm_argv(t) for t in shell_lines(text)]
    assert argvs == [["data", "build", "x.yaml", "--out", "y"], ["train", "clip", "--config", "r.yaml"], ["--help"], None]
    assert parse_error(["classify", "x.png"]) is not None  # --classes or --task is required
    assert parse_error(["classify", "x.png", "--task", "crc100k"]) is None


def test_python_blocks_parse_and_use_names_pathvlm_has():
    import pathvlm

    problems = []
    for path in DOC_FILES:
        for lang, body in code_blocks(read(path)) if path.exists() else []:
            if lang not in ("python", "py"):
                continue
            try:
                tree = ast.parse(body)
            except SyntaxError as e:
                problems.append(f"{path.relative_to(ROOT)}: a python block does not parse: {e}")
                continue
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pathvlm"
                        and not hasattr(pathvlm, node.attr)):
                    problems.append(f"{path.relative_to(ROOT)}: pathvlm.{node.attr} does not exist")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- links
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(text: str) -> list[str]:
    return LINK.findall(without_code(text)) + re.findall(r'<img[^>]+src="([^"]+)"', text)


def link_problems(path: Path) -> list[str]:
    problems = []
    for target in links(read(path)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}: ({target})"
        if not dest.exists():
            problems.append(f"{where}: {file_part} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(read(dest)):
            problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def test_relative_links_and_images_resolve():
    problems = [p for f in DOC_FILES if f.exists() for p in link_problems(f)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_checker_catches_a_broken_link_and_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# Models and `--model` forms\n[ok](a.md#models-and---model-forms) [gone](b.md) "
                                   "[bad](a.md#nowhere) `[code](x.md)` [web](https://x.org)\n")
    problems = link_problems(tmp_path / "a.md")
    assert len(problems) == 2 and "b.md does not exist" in problems[0] and "#nowhere" in problems[1], problems


def test_the_readme_fits_on_a_screen():
    lines = read(README).count("\n")
    assert lines <= 300, f"README.md has {lines} lines: move reference material into docs/"


@pytest.mark.parametrize("page", ["README.md", "models.md", "cli.md", "python-api.md", "data.md", "training.md",
                                  "serving.md", "evaluation.md", "results.md", "architecture.md", "changelog.md"])
def test_every_docs_page_exists_and_is_linked_from_the_index(page):
    assert (DOCS / page).exists(), f"docs/{page} is missing"
    if page != "README.md":
        assert f"({page})" in read(DOCS / "README.md") or f"({page}#" in read(DOCS / "README.md"), \
            f"docs/README.md does not link {page}"
