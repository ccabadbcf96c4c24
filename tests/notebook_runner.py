"""Running walkthrough notebooks as scripts, for tests/test_notebooks_part*.py.

Each notebook runs in its own subprocess with ``--out`` in a temporary folder and one torch thread; all the
selected ones are started together, so that their start-up overlaps, and each test then waits for its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def launch(request, tmp_path_factory, cases: dict, test_of: dict[str, str], env: dict[str, str]):
    """Start every notebook of ``cases`` whose test ``test_of[name]`` is selected in the calling module.

    A generator for a fixture (``yield from``): yields {name: (process, out folder, log file)}, then ends
    the processes still running and closes the logs."""
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    procs = {}
    for name, (extra, _) in cases.items():
        if test_of[name] not in selected:
            continue
        out = tmp_path_factory.mktemp(name)
        log = open(out.parent / f"{name}.log", "w+")
        cmd = [
            sys.executable,
            str(NOTEBOOKS / f"{name}.py"),
            "--out",
            str(out / "figs"),
            "--threads",
            "1",
            *extra,
        ]
        procs[name] = (
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
            out,
            log,
        )
    yield procs
    for proc, _, log in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def finish(
    launched,
    name: str,
    files: list[str],
    timeout_s: float,
    min_frames: int,
    unreported: tuple[str, ...] = (),
) -> tuple[Path, str]:
    """Wait for notebook ``name``; assert it succeeded and wrote ``files``, printing ``wrote`` for each
    (but those starting with one of ``unreported``), that its PNGs are sound and its GIFs have at least
    ``min_frames`` frames; returns (figures folder, log)."""
    proc, out, log = launched[name]
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{name} did not finish within {timeout_s} s")
    log.seek(0)
    text = log.read()
    assert proc.returncode == 0, f"{name} failed (exit {proc.returncode}):\n{text[-4000:]}"
    figs = out / "figs"
    for rel in files:
        path = figs / rel
        assert path.is_file() and path.stat().st_size > 0, f"{name} did not write {rel}\n{text[-2000:]}"
        assert f"wrote {path}" in text or rel.startswith(unreported), f"{name} did not report writing {rel}"
    for path in figs.rglob("*.png"):
        with Image.open(path) as im:
            im.verify()
    for path in figs.rglob("*.gif"):
        with Image.open(path) as im:
            assert im.format == "GIF"
            assert im.n_frames >= min_frames, f"{path.name} has only {im.n_frames} frames"
            im.seek(im.n_frames - 1)  # decodes through to the last frame
    return figs, text
