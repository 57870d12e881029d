"""`ngrpo view` in a real browser: Debian's `chromium`, headless, loads the page from a file (no
network) and dumps its DOM after the script ran. Checks: no console message and no script error,
and on every completions file the number of highlighted tokens equals the mixed positions in that
JSONL. `NGRPO_SCREENSHOT=PATH` also writes the README's screenshot (docs/images/view.png) from
the page.

chromium is a system package (`apt-get install chromium`; `.ci/run` installs it): without it this
test fails saying so, it does not skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ngrpo.cli import main
from ngrpo.study.view import build_page, load_run
from ngrpo.tracking.completions import mixed_count, read_completions
from ngrpo.utils.errors import NgrpoError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--virtual-time-budget=3000", "--enable-logging=stderr", "--v=0"]  # fmt: skip


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "the page test needs Debian's chromium: apt-get install -y chromium"
    return found


def _dump(page: Path, fragment: str, tmp_path: Path) -> tuple[str, str]:
    """(DOM after the script ran, browser log) for `page#fragment`."""
    done = subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         f"{page.resolve().as_uri()}#{fragment}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


@pytest.mark.slow
def test_view_page_renders_without_errors_and_highlights_every_mixed_token(
    tracked_run, tmp_path, capsys
):
    page = tmp_path / "page.html"
    assert main(["view", str(tracked_run), "--out", str(page)]) == 0
    assert capsys.readouterr().out.strip() == str(page)
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched
    files = sorted((tracked_run / "completions").glob("*.jsonl"))
    assert [f.name for f in files] == [
        "eval-step-000002.jsonl", "eval-step-000003.jsonl",
        "step-000001.jsonl", "step-000002.jsonl", "step-000003.jsonl",
    ]  # fmt: skip
    for file in files:
        dom, log = _dump(page, f"file={file.stem}", tmp_path)
        assert 'data-ready="1"' in dom and 'data-errors="0"' in dom, dom[-3000:]
        assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
        highlighted = len(re.findall(r'<span class="tok mx[ "]', dom))
        assert highlighted == mixed_count(read_completions(file)), file.name
        if file.name.startswith("eval-"):
            assert highlighted == 0  # mixing is off at evaluation
    assert mixed_count(read_completions(files[-1])) > 0
    # the curves of the metrics the run has
    for metric in ("reward/mean", "eval/arith-id/mean@n", "actor/entropy", "rollout/mixed_frac",
                   "mismatch/kl_k3", "time/step_s"):  # fmt: skip
        assert f'data-metric="{metric}"' in dom
    shot = os.environ.get("NGRPO_SCREENSHOT")
    if shot:  # the README's picture: `NGRPO_SCREENSHOT=docs/images/view.png pytest -k view_page`
        subprocess.run(
            [_chromium(), *FLAGS, "--window-size=1280,1400", f"--screenshot={Path(shot).resolve()}",
             f"{page.resolve().as_uri()}#file=step-000003&pin=1"],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip


def test_page_script_errors_are_caught_by_the_check(tracked_run, tmp_path):
    """The browser check itself can fail: a page whose script breaks shows it in both signals."""
    page = tmp_path / "broken.html"
    page.write_text(
        build_page([tracked_run]).replace(
            "drawCharts();\nsetupBrowser();", "drawCharts();\nnoSuchFunction();"
        )
    )
    dom, log = _dump(page, "", tmp_path)
    assert 'data-errors="1"' in dom and "noSuchFunction" in log


def test_text_in_completions_cannot_close_the_script(tmp_path):
    run = tmp_path / "run"
    (run / "completions").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "type": "train", "reward/mean": 0.5}\n')
    (run / "completions" / "step-000001.jsonl").write_text(
        '{"step": 1, "group": 0, "sample": 0, "prompt": "</script><b>x", "response": "r", '
        '"reward": 1.0, "mixed": []}\n'
    )
    html = build_page([run])
    assert "</script><b>" not in html and load_run(run)["completions"][0]["rows"][0]["prompt"]


def test_view_of_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(NgrpoError, match="not a run directory"):
        build_page([tmp_path])


def test_demo_writes_the_page_beside_its_report(tracked_run, tmp_path):
    """`ngrpo demo` ends with `view.html` of each method's first run (here the same run twice:
    the two labels are told apart by their parent folder)."""
    import json
    from types import SimpleNamespace

    from ngrpo.study.demo import _write_view

    other = tmp_path / "copy" / tracked_run.name
    shutil.copytree(tracked_run, other, ignore=shutil.ignore_patterns("checkpoints", "best"))
    settings = SimpleNamespace(out=tmp_path, seeds=[0])
    _write_view(settings, {"a": [{"run_dir": str(tracked_run)}], "b": [{"run_dir": str(other)}]})
    html = (tmp_path / "view.html").read_text()
    data = json.loads(re.search(r'id="data">(.*?)</script>', html, re.S).group(1))
    names = [run["name"] for run in data["runs"]]
    assert len(set(names)) == 2 and all(n.endswith(tracked_run.name) for n in names)
