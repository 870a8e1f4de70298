"""The README and docs/ stay true: their commands, make targets, links and paths exist.

- (a) every `python -m tasks.…` (or `torchrun … -m tasks.…`) in README.md and docs/*.md, in code blocks or inline
  code, names a module that exists and whose `--help` exits 0 and prints a usage; a subcommand it names
  (`python -m tasks.release.registry show`) answers `--help` too, and every `--option` the docs pass to it is
  one the parser lists;
- (b) every `make <target>` they mention is a target of the Makefile;
- (c) every relative link points at an existing file, and its `#anchor` at a heading there;
- (d) every repo path in backticks (tasks/…, include/…, bench/…, tests/…, dags/…, plugins/…, docs/…) exists.

The `--help` runs are subprocesses of this venv's Python, offline, a few at a time (each is well under a
second: the entry points import their heavy libraries lazily).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Modules the docs name after `-m` whose CLI has no --help by design: none today. Add one here, with the reason,
# rather than dropping the command from the docs.
NO_HELP: dict[str, str] = {}

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
MODULE_CMD = re.compile(r"(?:^|\s)-m\s+(tasks(?:\.[A-Za-z_]\w*)+)([^\n]*)")
MAKE_CMD = re.compile(r"(?:^|[\s(;&|$])make\s+([a-z][\w-]*)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
REPO_PATH = re.compile(r"(?:^|(?<=[\s(=\"'`]))((?:tasks|include|bench|tests|dags|plugins|docs)/[\w./-]*)")
END_OF_ARGS = re.compile(r"\s(?:#|\||;|&&|\))|`")


def _doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def _code(text: str) -> list[str]:
    """The code of a page: each fenced block (continuation lines joined) and each inline code span outside them."""
    blocks = [re.sub(r"\\\n\s*", " ", block) for block in FENCE.findall(text)]
    prose = FENCE.sub("", text)
    return blocks + INLINE.findall(prose)


def _module_commands() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(page, module, subcommand or '', options) for every `-m tasks.…` the pages show."""
    found = {}
    for page in DOCS:
        for code in _code(page.read_text()):
            for module, rest in MODULE_CMD.findall(code):
                cut = END_OF_ARGS.search(" " + rest)
                args = (" " + rest)[: cut.start()].split() if cut else rest.split()
                args = [a.strip("[]") for a in args]
                sub = args[0] if args and re.fullmatch(r"[a-z][a-z-]*", args[0]) else ""
                options = tuple(sorted({a.split("=")[0] for a in args if re.match(r"--[a-z]", a)}))
                found.setdefault((module, sub, options), _doc_id(page))
    return sorted((page, module, sub, options) for (module, sub, options), page in found.items())


COMMANDS = _module_commands()


@cache
def _help(module: str, sub: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", module, *([sub] if sub else []), "--help"]
    env = {**os.environ, **OFFLINE_ENV}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def helps() -> dict[tuple[str, str], subprocess.CompletedProcess]:
    """Every --help the pages need, run a few at a time (a module's own --help too, for a subcommand's)."""
    keys = sorted(
        {(m, s) for _, m, s, _ in COMMANDS if m not in NO_HELP}
        | {(m, "") for _, m, _, _ in COMMANDS if m not in NO_HELP}
    )
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2) * 2) as pool:
        return dict(zip(keys, pool.map(lambda k: _help(*k), keys), strict=True))


def test_the_docs_show_module_commands():
    assert len({m for _, m, _, _ in COMMANDS}) >= 10, COMMANDS


@pytest.mark.parametrize(
    ("page", "module", "sub", "options"),
    COMMANDS,
    ids=[f"{m}{' ' + s if s else ''}{' ' + ' '.join(o) if o else ''}" for _, m, s, o in COMMANDS],
)
def test_module_command(page, module, sub, options, helps):
    path = REPO.joinpath(*module.split("."))
    assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), (
        f"{page}: `python -m {module}`: no module {module} (ls tasks/*/*.py)"
    )
    if module in NO_HELP:
        return
    main = helps[(module, "")]
    assert main.returncode == 0 and "usage:" in main.stdout, (
        f"{page}: `python -m {module} --help` exit {main.returncode}, no usage:\n{main.stdout[-800:]}{main.stderr[-2000:]}"
    )
    if sub and sub not in main.stdout:
        # The first word after the module is an argument, not a subcommand (this parser has none by that name).
        sub, result = "", main
    else:
        result = helps[(module, sub)]
    shown = f"python -m {module}{' ' + sub if sub else ''}"
    assert result.returncode == 0 and "usage:" in result.stdout, (
        f"{page}: `{shown} --help` exit {result.returncode}:\n{result.stdout[-800:]}{result.stderr[-2000:]}"
    )
    listed = set(re.findall(r"--[a-z][\w-]*", result.stdout))
    unknown = [o for o in options if o not in listed]
    assert not unknown, f"{page}: `{shown}` has no option {', '.join(unknown)} (its --help lists {sorted(listed)})"


def _make_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.%/ -]+?)\s*::?(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets


MAKE_MENTIONS = sorted({(_doc_id(p), t) for p in DOCS for code in _code(p.read_text()) for t in MAKE_CMD.findall(code)})


@pytest.mark.parametrize(("page", "target"), MAKE_MENTIONS, ids=[f"{p}:{t}" for p, t in MAKE_MENTIONS])
def test_make_target_exists(page, target):
    assert target in _make_targets(), f"{page}: `make {target}` is not a target of the Makefile"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*?|_(?=\W)|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text, flags=re.UNICODE)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return frozenset(out)


LINKS = sorted(
    {
        (_doc_id(p), target)
        for p in DOCS
        for target in LINK.findall(FENCE.sub("", p.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)
    }
)


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p}->{t}" for p, t in LINKS])
def test_relative_link(page, target):
    source = REPO / page
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    assert dest.exists(), f"{page}: link ({target}) points at a missing file {dest}"
    assert dest.is_relative_to(REPO), f"{page}: link ({target}) leaves the repository"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), (
            f"{page}: link ({target}): no heading #{anchor} in {dest.name} ({sorted(anchors(dest))})"
        )


def _repo_paths() -> list[tuple[str, str]]:
    out = set()
    for page in DOCS:
        for code in _code(page.read_text()):
            for path in REPO_PATH.findall(code):
                path = path.rstrip(".,:;")
                if path:
                    out.add((_doc_id(page), path))
    return sorted(out)


REPO_PATHS = _repo_paths()


@pytest.mark.parametrize(("page", "path"), REPO_PATHS, ids=[f"{p}:{x}" for p, x in REPO_PATHS])
def test_repo_path_exists(page, path):
    assert (REPO / path).exists(), f"{page}: `{path}` does not exist in the repository"


def _packages() -> dict[str, set[str]]:
    """tasks/'s packages and their modules, as they are on disk."""
    return {
        pkg.name: {m.stem for m in pkg.glob("*.py") if m.stem != "__init__"}
        for pkg in sorted((REPO / "tasks").iterdir())
        if (pkg / "__init__.py").is_file()
    }


def _layout_block(page: Path) -> str:
    """The first fenced block under the page's layout heading."""
    text = page.read_text()
    heading = re.search(r"^#{2,3} Layout[^\n]*\n", text, re.M)
    assert heading, f"{_doc_id(page)}: no '## Layout' section"
    block = FENCE.search(text, heading.end())
    assert block, f"{_doc_id(page)}: no code block under its layout heading"
    return block.group(1)


@pytest.mark.parametrize("page", ["README.md", "docs/development.md"])
def test_layout_names_every_package(page):
    """The layout sections describe the tree as it is: every package under tasks/, and no package that is gone."""
    block = _layout_block(REPO / page)
    named = set(re.findall(r"^ {2}(\w+)/", block, re.M))
    assert named == set(_packages()), (
        f"{page}: its layout names tasks/ packages {sorted(named)}, the tree has {sorted(_packages())}"
    )


def test_detailed_layout_names_every_module():
    block = _layout_block(REPO / "docs/development.md")
    words = set(re.findall(r"\w+", block))
    missing = sorted(f"tasks/{pkg}/{mod}.py" for pkg, mods in _packages().items() for mod in mods if mod not in words)
    assert not missing, f"docs/development.md: its layout does not name {missing}"


def test_extraction_finds_what_it_should():
    """The extractors see the commands the pages are built around (guards against a regex that matches nothing)."""
    modules = {m for _, m, _, _ in COMMANDS}
    assert {
        "tasks.stages.privacy_finetune",
        "tasks.train.ledger",
        "tasks.release.registry",
        "tasks.train.recipe",
    } <= modules
    assert ("tasks.release.registry", "promote") in {(m, s) for _, m, s, _ in COMMANDS}
    assert {"demo", "test", "airflow"} <= {t for _, t in MAKE_MENTIONS}
    assert any(t.startswith("docs/") for p, t in LINKS if p == "README.md")
    assert any(x == "include/config/pipeline.yaml" for _, x in REPO_PATHS)
    assert slug("Monthly re-finetuning: `monthly_refinetune`") == "monthly-re-finetuning-monthly_refinetune"
    assert slug("Operator's runbook") == "operators-runbook"
