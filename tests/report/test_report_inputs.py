"""The report's inputs are untrusted: odd result files are skipped with the reason, its files written as one set."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from benchmark.core.io import atomic_write_json
from benchmark.report import write as report_write
from benchmark.report.write import NoCellsError, write_report
from benchmark.run.record import content_digest
from benchmark.run.sweep import cell_lock
from tests.report.test_report import fake_result

OK = ("badnets", "rnp", 0)


def _signed(result: dict) -> dict:
    return {**result, "digest": content_digest(result)}


def _sweep(root: Path, odd: dict[str, object]) -> Path:
    """One good cell, and one cell per odd result.json (`text` written as is when a str, else as JSON)."""
    atomic_write_json(root / "cifar10/resnet18/badnets/rnp/seed0/result.json", _signed(fake_result(*OK, 0.88, 0.1)))
    for i, (name, body) in enumerate(odd.items(), start=1):
        path = root / f"cifar10/resnet18/{name}/rnp/seed{i}/result.json"
        path.parent.mkdir(parents=True)
        path.write_text(body if isinstance(body, str) else json.dumps(body))
    return root


def _odd(**over: object) -> dict:
    return _signed({**fake_result(*OK, 0.88, 0.1), **over})


ODD = {
    "info-is-text": _odd(defense_info="pruned 3 channels"),
    "der-is-text": _odd(der="0.5"),
    "curve-of-text": _odd(defense_info={"curve": ["x"], "selected_threshold": 0.2}),
    "timing-of-text": _odd(timing_s={"total": "a while"}),
    "seed-is-text": _odd(cell={**fake_result(*OK, 0.88, 0.1)["cell"], "seed": "zero"}),
    "deep": '{"schema": 1, "x": ' + "[" * 200_000 + "]" * 200_000 + "}",
}


def test_odd_result_files_are_skipped_with_the_reason_and_the_rest_reported(tmp_path: Path) -> None:
    root = _sweep(tmp_path / "sweep", ODD)
    report = write_report(root, plots=False)
    rows = {c.row["path"].split("/")[2]: c.row for c in report.cells}
    assert rows["badnets"]["status"] == "ok"
    for name in ODD:
        assert rows[name]["status"] == "invalid", name
    assert 'defense_info is "pruned 3 channels", expected an object' in rows["info-is-text"]["error"]
    assert 'der is "0.5", expected a number' in rows["der-is-text"]["error"]
    assert "nested deeper than" in rows["deep"]["error"]
    md = (root / "results.md").read_text()
    assert all(f"cifar10/resnet18/{name}/rnp" in md for name in ODD)  # each skipped file listed, with why
    assert (root / "results.csv").read_text().count("\n") == len(ODD) + 2


def test_unknown_extra_keys_are_accepted(tmp_path: Path) -> None:
    extra = _odd(premise={"verdict": "holds"}, implant=True, defense_info={"diagnostics": {"x": [1, 2]}})
    root = _sweep(tmp_path / "sweep", {"extra": extra})
    assert all(c.ok for c in write_report(root, plots=False).cells)


def test_the_report_files_are_written_as_one_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _sweep(tmp_path / "sweep", {})
    write_report(root, plots=False)
    old = {p: p.read_text() for p in root.iterdir() if p.suffix in (".csv", ".md", ".html")}
    atomic_write_json(
        root / "cifar10/resnet18/blend/rnp/seed0/result.json", _signed(fake_result("blend", "rnp", 0, 0.9, 0.2))
    )

    def broken(*_a: object, **_k: object) -> str:
        raise RuntimeError("the HTML writer broke")

    monkeypatch.setattr(report_write, "html_report", broken)
    with pytest.raises(RuntimeError):
        write_report(root, plots=False)
    assert {p: p.read_text() for p in old} == old  # results.csv was not rewritten ahead of the others
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_a_result_without_its_digest_is_reported_with_a_note(tmp_path: Path, caplog) -> None:
    root = _sweep(tmp_path / "sweep", {"undigested": fake_result(*OK, 0.88, 0.1)})
    with caplog.at_level("WARNING", logger="benchmark.report"):
        report = write_report(root, plots=False)
    assert all(c.ok for c in report.cells)
    md = (root / "results.md").read_text()
    assert "## Notes" in md and "cifar10/resnet18/undigested/rnp/seed1: no digest" in md
    assert "undigested" in caplog.text and "not verified" in caplog.text


def test_a_cell_another_sweep_is_running_is_named_in_the_report(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    run_dir = root / "cifar10/resnet18/blend/rnp/seed0"
    lock = cell_lock(run_dir, root)
    atomic_write_json(Path(lock.lock_file).with_suffix(".json"), {"path": "cifar10/resnet18/blend/rnp/seed0"})
    script = f"import time; from filelock import FileLock; lock = FileLock({lock.lock_file!r}); lock.acquire(); "
    script += "print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(NoCellsError, match="1 cell\\(s\\) are being run by another sweep now"):
            write_report(root, plots=False)  # a one-cell grid: says why, not "no result.json"
        _sweep(root, {})
        write_report(root, plots=False)
        md = (root / "results.md").read_text()
        assert "cifar10/resnet18/blend/rnp/seed0: left out, another sweep is running this cell now" in md
    finally:
        holder.kill()
        holder.wait()
    with FileLock(lock.lock_file).acquire(timeout=5):
        pass
    write_report(root, plots=False)
    assert "left out" not in (root / "results.md").read_text()
    assert os.path.exists(root / "results.md")


def test_a_full_disk_leaves_the_old_report_and_says_so_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    root = _sweep(tmp_path / "sweep", {})
    write_report(root, plots=False)
    old = {p: p.read_text() for p in root.iterdir() if p.suffix in (".csv", ".md", ".html")}
    real = os.fdopen

    class Full:
        def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
            self.f = f

        def write(self, _data) -> int:  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real(fd, *a, **k)))
    assert report_write.main([str(root), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"No space left on the device holding {root} while writing the report" in err and "Traceback" not in err
    assert {p: p.read_text() for p in old} == old and not [p for p in root.iterdir() if p.name.endswith(".tmp")]
