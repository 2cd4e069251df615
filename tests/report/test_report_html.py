"""report.html in a real headless Chromium, driven over the DevTools protocol: sorting, filters, no console errors,
no injected markup; the screenshot is kept in tests/artifacts/ (git-ignored) to look at."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from benchmark.core.io import atomic_write_json
from benchmark.report.write import write_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EVIL = '</pre><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
# (attack, defense) -> per seed (clean acc, ASR) after the defense; every seed's backdoored model: 0.9 / 1.0
AFTER = {
    ("badnets", "rnp"): [(0.88, 0.10), (0.86, 0.02)],
    ("badnets", "anp"): [(0.70, 0.00), (0.72, 0.01)],
    ("badnets", "clp"): [(0.90, 0.60), (0.89, 0.55)],
    ("blend", "rnp"): [(0.85, 0.30), (0.84, 0.20)],
    ("blend", "anp"): [(0.87, 0.05)],
}


def result(attack: str, defense: str, seed: int, ca: float, asr: float) -> dict[str, Any]:
    curve = [
        {"threshold": t, "pruned": 20 + int(100 * t), "clean_acc": ca + (0.2 - t) / 10, "asr": max(0.0, 1 - 3 * t)}
        for t in (0.0, 0.1, 0.2, 0.3)
    ]
    curve = [{**r, "robust_acc": 1 - r["asr"]} for r in curve]
    return {
        "schema": 1,
        "cell": {"attack": attack, "dataset": "cifar10", "arch": "resnet18", "defense": defense, "seed": seed},
        "model_source": "cache",
        "before": {"clean_acc": 0.9, "asr": 1.0, "robust_acc": 0.0},
        "after": {"clean_acc": ca, "asr": asr, "robust_acc": 1 - asr},
        "der": (1.0 - asr - max(0.0, 0.9 - ca) + 1) / 2,
        "defense_info": {"selected_threshold": 0.2, "curve": curve} if defense != "clp" else {"u": 3.0},
        "timing_s": {"data": 1.0, "model": 2.0, "evaluate": 3.0, "defense": 10.0 + seed, "total": 20.0 + seed},
        "config": {"seed": seed, "note": EVIL},
        "model_meta": {"train_seconds": 100.0},
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sweep (9 results, 1 failed cell with markup in its error) and its report.html (written once)."""
    root = tmp_path_factory.mktemp("report_html") / "sweep"
    for (attack, defense), values in AFTER.items():
        for seed, (ca, asr) in enumerate(values):
            path = root / "cifar10/resnet18" / attack / defense / f"seed{seed}" / "result.json"
            atomic_write_json(path, result(attack, defense, seed, ca, asr))
    failed = {"error": f"RuntimeError: {EVIL}", "cell": {**result("blend", "anp", 1, 0, 0)["cell"]}}
    atomic_write_json(root / "cifar10/resnet18/blend/anp/seed1/failed.json", failed)
    write_report(root)
    return root / "report.html"


def test_page_is_self_contained_and_escapes_result_strings(report: Path) -> None:
    page = report.read_text()
    assert "window.__pwned" in page  # the config and the error are shown...
    assert "<script>window.__pwned" not in page and "<img src=x" not in page  # ...as text only
    assert page.count("<script") == 1  # the page's own script
    assert re.findall(r'(?:src|href)="(?!data:|#)[^"]*"', page) == []  # no network: images are data URIs
    assert page.count('src="data:image/png;base64,') == 3  # clean vs ASR, pruning curves of badnets and blend
    assert page.count("<details data-f") == 10  # one per cell, the failed one too


class Chromium:
    """Headless Chromium on a DevTools port (127.0.0.1 only), one page, a blocking websocket client."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.log = profile.parent / "chromium.log"
        args = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--window-size=1280,2000"]
        args += ["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}"]
        self.proc = subprocess.Popen([*args, "about:blank"], stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, event: str) -> dict[str, Any]:
        seen = len(self.events)
        while True:
            for msg in self.events[seen:]:
                if msg.get("method") == event:
                    return msg
            seen = len(self.events)
            self.events.append(json.loads(self.ws.recv()))

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (scrolled into the middle of the view)."""
        box = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and error log entries (failed loads) so far."""
        out = []
        for msg in self.events:
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(params["exceptionDetails"])[:300])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.append(params["entry"]["text"])
        return out

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    try:
        chrome = Chromium(binary, tmp_path / "profile")
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"chromium cannot start here: {exc}")
    try:
        for domain in ("Page", "Runtime", "Log"):
            chrome.call(f"{domain}.enable")
        yield chrome
    finally:
        chrome.close()


ROWS = "Array.from(document.querySelectorAll('#cells tbody tr')).filter((r) => !r.hidden)"


def der_column(chrome: Chromium) -> list[float]:
    """The DER values (%) of the visible rows of the cells table, in page order (failed cells have none)."""
    i = chrome.js("Array.from(document.querySelectorAll('#cells thead th')).findIndex((th) => th.dataset.k === 'der')")
    values = chrome.js(f"{ROWS}.map((r) => r.cells[{i}].dataset.v)")
    return [float(v) for v in values if v]


def test_sorting_filtering_in_a_real_browser(report: Path, browser: Chromium, tmp_path: Path) -> None:
    url = report.as_uri()
    browser.open(url)
    first = der_column(browser)
    assert len(first) == 9 and first != sorted(first) and first != sorted(first, reverse=True)

    browser.click("#cells th[data-k=der]")  # ascending
    assert der_column(browser) == sorted(first)
    browser.click("#cells th[data-k=der]")  # descending
    assert der_column(browser) == sorted(first, reverse=True)
    assert browser.js(ROWS + ".length") == 10 and browser.js(ROWS + "[9].cells[5].textContent") == "failed"
    assert browser.js("location.search") == "?sort=cells.der&dir=desc"  # the view as a link

    browser.js("window.scrollTo(0, 0)")  # the screenshot shows the top: definitions, filters, pivots
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    ARTIFACTS.mkdir(exist_ok=True)
    for path in (tmp_path / "report_html.png", ARTIFACTS / "report_html.png"):
        path.write_bytes(shot)
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000

    browser.open(url + "?attack=blend&defense=rnp&sort=cells.der&dir=asc")  # the state from the URL
    assert browser.js(f"{ROWS}.map((r) => r.dataset.attack + '/' + r.dataset.defense)") == ["blend/rnp"] * 2
    assert der_column(browser) == sorted(der_column(browser))
    hidden = "(s) => Array.from(document.querySelectorAll(s)).every((e) => e.hidden)"
    assert browser.js(f"({hidden})('#g0-asr [data-defense=anp]')")  # pivot columns of other defenses hidden
    assert not browser.js(f"({hidden})('#g0-asr [data-defense=rnp]')")
    assert browser.js("document.getElementById('f-attack').value") == "blend"

    browser.click("#g0-asr th[data-k=rnp]")  # pivots sort too: badnets's rnp ASR 6.0 is below blend's 25.0
    assert browser.js("Array.from(document.querySelectorAll('#g0-asr tbody tr')).map((r) => r.dataset.attack)") == [
        "badnets",
        "blend",
    ]
    assert browser.js("typeof window.__pwned") == "undefined" and browser.js("document.scripts.length") == 1
    assert browser.errors() == []
    browser.js("console.error('probe')")  # the check above sees console errors when there are some
    assert browser.errors() == ["probe"]
