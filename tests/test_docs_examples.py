"""Every Python example in README.md and docs/ runs, and every command's flags exist.

* Each ```` ```python ```` block is executed. The blocks of one page run in
  order in one namespace, as a reader would type them into one session, in a
  fresh temporary working directory (so ``model_dir="runs/..."`` lands there).
* A block that needs hardware or processes this suite does not start is marked
  on the line just above its fence with ``<!-- example: needs cluster -->``
  (or ``gpu``, ``tpu``). Marked blocks are compiled but not run, and they are
  pinned in ``NOT_RUN`` below: marking one more block is a visible change.
* Each ``python -m launch.X ...`` (or ``tfopt-train``/``tfopt-local-cluster``)
  line of a ```` ```sh ```` block has its ``--flags`` checked against the
  flags that entry point accepts, so a renamed flag breaks this test, not the docs.
* Relative links in README.md point at files that exist (the docs build checks
  the links inside docs/ itself, strictly).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shlex

import pytest
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = re.compile(r"<!--\s*example:\s*needs\s+(cluster|gpu|tpu)\s*-->")
FENCE = re.compile(r"([ \t]*)```(\S.*)?")

# (page, index of the Python block in that page, what it needs). Every marked
# block is listed here; the test fails if a block is marked and not listed, or
# listed and not marked.
NOT_RUN = {
    ("docs/strategies/platforms.md", 0, "cluster"),  # serve_forever / ParameterServerStrategy chief
    ("docs/strategies/platforms.md", 1, "tpu"),  # Colab TPU: `!pip install`, then build("tpu")
    ("docs/strategies/fit.md", 2, "cluster"),  # TensorFlow's multi-worker tutorial, 2 workers
    ("docs/strategies/fit.md", 3, "cluster"),  # the same under parameter servers
    ("docs/strategies/fit.md", 4, "cluster"),  # the side-car evaluator beside fit and serve_forever
}


@dataclasses.dataclass(frozen=True)
class Block:
    page: str
    index: int  # among the page's Python blocks
    line: int
    code: str
    needs: str | None


def pages() -> list[str]:
    found = ["README.md"]
    for root, _, files in os.walk(os.path.join(REPO, "docs")):
        found += [os.path.relpath(os.path.join(root, f), REPO) for f in files if f.endswith(".md")]
    return sorted(found)


def _read(page: str) -> str:
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def fenced(page: str, language: str) -> list[tuple[int, str, str | None]]:
    """(line, code, needs) of each fenced block in ``language``, in page order."""
    return fenced_text(_read(page), language)


def fenced_text(text: str, language: str) -> list[tuple[int, str, str | None]]:
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.fullmatch(lines[i])
        if not opening:
            i += 1
            continue
        indent, info = opening.group(1), opening.group(2) or ""
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if info.split(" ", 1)[0] == language:
            previous = next((row for row in reversed(lines[:i]) if row.strip()), "")
            mark = MARK.fullmatch(previous.strip())
            code = "\n".join(row[len(indent):] for row in lines[i + 1:end])
            blocks.append((i + 1, code, mark.group(1) if mark else None))
        i = end + 1
    return blocks


def python_blocks() -> list[Block]:
    return [Block(page, i, line, code, needs)
            for page in pages()
            for i, (line, code, needs) in enumerate(fenced(page, "python"))]


PAGES_WITH_CODE = sorted({b.page for b in python_blocks() if b.needs is None})


def test_every_marked_block_is_listed_and_every_listed_block_is_marked():
    marked = {(b.page, b.index, b.needs) for b in python_blocks() if b.needs}
    assert marked == NOT_RUN


def test_the_marker_is_recognised_only_right_above_a_fence():
    text = ("<!-- example: needs cluster -->\n```python\nx = 1\n```\n\n```python\ny = 2\n```\n"
            "```sh\nls\n```\n  ```python\n  z = 3\n  ```\n")
    assert fenced_text(text, "python") == [(2, "x = 1", "cluster"), (6, "y = 2", None),
                                           (12, "z = 3", None)]


def test_marked_blocks_still_compile():
    for block in python_blocks():
        if block.needs:
            source = "\n".join(row for row in block.code.splitlines() if not row.startswith("!"))
            compile(source, f"{block.page}:{block.line}", "exec")


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_example_" + re.sub(r"\W", "_", page)}
    ran = 0
    for block in python_blocks():
        if block.page != page or block.needs:
            continue
        code = compile(block.code, f"{page}:{block.line}", "exec")
        exec(code, namespace)  # Running the docs' code is the point of this test.
        ran += 1
    assert ran > 0


def test_how_many_blocks_run():
    # The count goes into the docs issue's note; a page that loses all its
    # examples shows up here as a drop.
    blocks = python_blocks()
    run = [b for b in blocks if not b.needs]
    assert len(run) >= 10, [f"{b.page}:{b.line}" for b in run]
    assert len(blocks) == len(run) + len(NOT_RUN)


# --- Shell commands: their flags must exist ---------------------------------

CONSOLE_SCRIPTS = {"tfopt-train": "launch.train", "tfopt-local-cluster": "launch.local_cluster",
                   "tfopt-vertex": "launch.vertex", "tfopt-kubernetes": "launch.kubernetes"}


def _accepted_flags(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    names = {f.name for f in flags.FLAGS.get_key_flags_for_module(module)}
    return names | {"help", "helpfull", "helpshort"}


def _commands(code: str) -> list[tuple[str, list[str]]]:
    """(module, args) of each launch command in a shell block, `\\` continuations joined."""
    found = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        # `local_cluster ... -- python -m launch.train ...` holds two commands.
        while words:
            module, rest = None, words
            for i, word in enumerate(words):
                if word == "-m" and i + 1 < len(words) and words[i + 1].startswith("launch."):
                    module, rest = words[i + 1], words[i + 2:]
                    break
                if word in CONSOLE_SCRIPTS:
                    module, rest = CONSOLE_SCRIPTS[word], words[i + 1:]
                    break
            if module is None:
                break
            if "--" in rest:
                cut = rest.index("--")
                found.append((module, rest[:cut]))
                words = rest[cut + 1:]
            else:
                found.append((module, rest))
                words = []
    return found


def shell_commands() -> list[tuple[str, int, str, list[str]]]:
    return [(page, line, module, args)
            for page in pages()
            for lang in ("sh", "bash", "console")
            for line, code, _ in fenced(page, lang)
            for module, args in _commands(code)]


def test_the_command_parser_reads_nested_commands():
    assert _commands("python -m launch.local_cluster --workers=2 -- python -m launch.train "
                     "--strategy=multi_worker_mirrored   # 2 workers") == [
        ("launch.local_cluster", ["--workers=2"]),
        ("launch.train", ["--strategy=multi_worker_mirrored"]),
    ]


def test_shell_examples_use_only_flags_their_entry_point_defines():
    commands = shell_commands()
    assert {m for _, _, m, _ in commands} >= {"launch.train", "launch.local_cluster"}
    unknown = []
    for page, line, module, args in commands:
        accepted = _accepted_flags(module)
        for arg in args:
            if not arg.startswith("--"):
                continue
            name = arg[2:].split("=", 1)[0]
            if name not in accepted and not (name.startswith("no") and name[2:] in accepted):
                unknown.append(f"{page}:{line}: {module} has no --{name}")
    assert not unknown, "\n".join(unknown)


def test_readme_relative_links_resolve():
    text = _read("README.md")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = target.split("#", 1)[0]
        if not os.path.exists(os.path.join(REPO, path)):
            broken.append(target)
    assert not broken, f"README.md links to missing files: {broken}"
