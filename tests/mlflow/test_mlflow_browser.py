"""The MLflow UI as a person sees it: headless Chromium opens a registered model's page
served by `mlflow server` and finds its versions and the champion alias. The screenshot is
kept in test-artifacts/ for a human to look at."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.mlflow_mirror import Mirror, drain, track_model_name
from tests.support.mlflow_support import TASK, MlflowServer, make_world

pytestmark = pytest.mark.slow
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic",
                  "--disable-dev-shm-usage", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if IN_CI:
        pytest.fail("chromium is required in CI (apt-get install chromium; see .ci/run)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def run_chromium(binary: str, profile: Path, *args: str, timeout_s: float = 120) -> str:
    """One headless Chromium run in its own process group, killed whole on timeout."""
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        raise
    assert proc.returncode == 0, err[-2000:]
    return out


@pytest.fixture
def served_model(sqlite_url: str, tiny_model_dir: Path, tmp_path: Path
                 ) -> Iterator[tuple[str, dict[str, str]]]:
    """A track with versions 1-3 (v2 champion, v1 previous) mirrored into a live server."""
    from registry.service import Registry
    from registry.settings import load_settings

    reg = Registry(load_settings(home=tmp_path / "home", database_url=sqlite_url), "tester")
    world = make_world(reg, tiny_model_dir, tmp_path)
    for _ in range(3):
        world.adapter()
    reg.promote(TASK, "sw", 1)
    reg.promote(TASK, "sw", 2)
    server = MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "server").start()
    try:
        report = drain(reg, Mirror.open(reg, server.url))
        assert report.failed == 0 and reg.outbox_backlog()["pending"] == 0
        yield server.url, {"champion": "2", "previous": "1"}
    finally:
        server.stop()


def rows_of(dom: str) -> list[str]:
    """The text of each table row of the versions table, tags stripped."""
    parts = re.split(r'role="row"', dom)[1:]
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", p)).replace("&nbsp;", " ")
            for p in parts]


def test_model_page_shows_versions_and_champion(chromium: str, served_model, tmp_path) -> None:
    url, aliases = served_model
    page = f"{url}/#/models/{track_model_name(TASK, 'sw')}"
    # the UI is a React app: let it fetch and render within a virtual-time budget
    dom = run_chromium(chromium, tmp_path / "profile-dom", "--virtual-time-budget=15000",
                       "--dump-dom", page)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "mlflow-model-page.html").write_text(dom)
    assert track_model_name(TASK, "sw") in dom
    rows = rows_of(dom)
    version_rows = {m.group(1): r for r in rows if (m := re.search(r"Version (\d+)", r))}
    assert set(version_rows) == {"1", "2", "3"}, rows
    for alias, version in aliases.items():
        assert f"@ {alias}" in version_rows[version], version_rows[version]
    assert "@ champion" not in version_rows["3"] and "@ champion" not in version_rows["1"]

    shot = ARTIFACTS / "mlflow-model-page.png"
    shot.unlink(missing_ok=True)
    run_chromium(chromium, tmp_path / "profile-shot", "--virtual-time-budget=15000",
                 "--window-size=1400,1800", f"--screenshot={shot}", page)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_version_page_shows_source_run_and_current_status(chromium: str, served_model,
                                                          tmp_path) -> None:
    """The page a reviewer opens from the versions table: it must name the run that trained
    the version (a link to it) and the status the registry holds now."""
    from controller.mlflow_mirror.connection import open_client

    url, _ = served_model
    name = track_model_name(TASK, "sw")
    mv = open_client(url).get_model_version(name, "2")
    run = open_client(url).get_run(mv.run_id)
    page = f"{url}/#/models/{name}/versions/2"
    dom = run_chromium(chromium, tmp_path / "profile-version", "--virtual-time-budget=15000",
                       "--dump-dom", page)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "mlflow-version-page.html").write_text(dom)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "Source Run" in text, text[:3000]
    assert run.info.run_name in text  # the link to the training run, by its name
    assert mv.run_id in dom  # ... and its target
    assert "Status: champion" in text  # the description's first line, current status
    assert re.search(r"status\W+champion", text), text[:3000]  # the tag
