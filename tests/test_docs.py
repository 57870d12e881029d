"""The manual cannot rot: the generated reference pages are current (scripts/gen_docs.py), every
config key, alias and public name is documented, every relative link between the pages and the
README resolves, and every command block marked runnable runs (on the embedded default, small
budgets). `mkdocs build --strict` itself runs in CI (.ci/run), where the docs extra is installed."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import ngrpo
from ngrpo.config import ALIASES, config_keys

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
RUNNABLE = "<!-- runnable -->"  # on the line right above a ```bash fence


def _generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return _generator()


def test_generated_reference_pages_are_current(generator):
    """A renamed key, a changed default or docstring, a new option or shipped config changes
    the committed page: regenerate with `python scripts/gen_docs.py`."""
    for rel, build in generator.PAGES.items():
        page = DOCS / rel
        assert page.exists(), f"docs/{rel} missing: run python scripts/gen_docs.py"
        assert page.read_text() == build(), f"docs/{rel} is stale: run python scripts/gen_docs.py"


def test_every_config_key_and_alias_is_in_the_reference():
    text = (DOCS / "reference" / "configuration.md").read_text()
    headings = re.findall(r"^### `([\w.]+)`$", text, flags=re.MULTILINE)
    assert headings == config_keys()  # every key once, in declaration order
    for alias in ALIASES:
        assert f"`{alias}` (" in text, alias


def test_the_reference_states_what_validation_allows(generator):
    """The allowed values are validation's own words: a choice lists its registry, a bound its
    number (so a new strategy or a changed bound shows up in the page)."""
    from ngrpo.method.exploration import STRATEGIES

    allowed = generator._allowed
    assert allowed("exploration.strategy", str) == "choose one of " + ", ".join(STRATEGIES)
    assert allowed("train.steps", int) == "must be an integer >= 1"
    assert allowed("model.path", str) == ""  # any path: nothing to state


def test_every_public_name_is_on_the_python_api_page():
    text = (DOCS / "reference" / "python-api.md").read_text()
    for name in ngrpo.__all__:
        if name != "__version__":
            assert f"`ngrpo.{name}`" in text, name
    assert "internal" in text


def test_every_command_is_in_the_cli_reference():
    from ngrpo.cli import COMMANDS

    text = (DOCS / "reference" / "cli.md").read_text()
    for command in COMMANDS:
        assert f"## `ngrpo {command}`" in text, command


def _links_in(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # not inside code
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _links(page: Path) -> list[str]:
    return _links_in(page.read_text())


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    """Links between pages are relative paths to files that exist (mkdocs --strict checks the
    site in CI; this also covers the README, which is not part of the site)."""
    for link in _links(page):
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue
        target = (page.parent / link.split("#")[0]).resolve()
        assert target.exists(), f"{page.relative_to(ROOT)}: broken link {link}"


def _runnable_blocks(page: Path) -> list[str]:
    blocks = re.findall(
        re.escape(RUNNABLE) + r"\n```bash\n(.*?)```", page.read_text(), flags=re.DOTALL
    )
    return blocks


def _markers(page: Path) -> int:
    return len(re.findall(rf"^{re.escape(RUNNABLE)}$", page.read_text(), flags=re.MULTILINE))


RUNNABLE_PAGES = [p for p in [ROOT / "README.md", *PAGES] if _markers(p)]


def test_runnable_blocks_are_found():
    assert DOCS / "getting-started.md" in RUNNABLE_PAGES
    for page in RUNNABLE_PAGES:
        assert len(_runnable_blocks(page)) == _markers(page), page.name  # each above a bash block


def _commands(block: str) -> list[str]:
    """A block's commands, one string each (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


def test_the_readme_tour_is_run_in_getting_started():
    """The README's tour blocks (marked `<!-- runs in docs/PAGE -->`) hold only commands that
    PAGE runs, so they are tested there without running twice."""
    readme = (ROOT / "README.md").read_text()
    marked = re.findall(r"<!-- runs in (docs/[\w/.-]+) -->\n```bash\n(.*?)```", readme, re.DOTALL)
    assert marked
    for page, block in marked:
        runnable = [c for b in _runnable_blocks(ROOT / page) for c in _commands(b)]
        for command in _commands(block):
            assert command in runnable, f"README command not run in {page}: {command}"


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: p.name)
def test_runnable_commands_run(page, tmp_path):
    """A page's runnable blocks run in order in one fresh directory, as a reader following it
    would (`ngrpo` is this checkout's; examples/ and configs/ are there as in a clone)."""
    for name in ("examples", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    python = shlex.quote(sys.executable)
    prelude = (
        "set -euo pipefail\n"
        f'ngrpo() {{ {python} -m ngrpo "$@"; }}\n'
        f'python() {{ {python} "$@"; }}\n'
        f'torchrun() {{ {python} -m torch.distributed.run "$@"; }}\n'
    )
    for i, block in enumerate(_runnable_blocks(page)):
        done = subprocess.run(
            ["bash", "-c", prelude + block], cwd=tmp_path, capture_output=True, text=True,
            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert done.returncode == 0, f"{page.name} block {i + 1}:\n{block}\n{done.stderr[-3000:]}"


def test_the_site_front_page_is_the_readme_with_links_into_the_site():
    """scripts/mkdocs_hooks.py shows README.md as the site's index: its relative links must point
    into docs/, and they become relative to the site root."""
    spec = importlib.util.spec_from_file_location("hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    relative = [link for link in _links(ROOT / "README.md") if not re.match(r"[a-z]+:|#", link)]
    assert relative and all(link.startswith("docs/") for link in relative), relative
    page = hooks.site_readme((ROOT / "README.md").read_text())
    for link in _links_in(page):
        if not re.match(r"[a-z]+:|#", link):
            assert (DOCS / link.split("#")[0]).exists(), link


def test_getting_started_has_the_readme_set_up_commands():
    """The two set-up commands, word for word, where a reader of the manual starts."""
    first = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert first.group(1).startswith("bash scripts/setup.sh && ")
    assert first.group(0) in (DOCS / "getting-started.md").read_text()
