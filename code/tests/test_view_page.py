"""``pbidr view`` in a real browser: the command serves README's small run, headless Chromium loads the
page (WebGL in software), and screenshots show that the meshes are drawn, that moving the raking light
relights them, and that the page's toggles change what is drawn. Every control is used as a user would:
mouse clicks at its place on the screen.

Without Chromium (Debian's ``chromium``) or the viewer extra the tests skip, except where
``PBIDR_REQUIRE_BROWSER=1`` (CI sets it, .ci/run): there they fail. ``PBIDR_VIEW_SCREENSHOT=1`` writes
README's picture of the page, docs/view.png.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from browser import Browser, chromium_path

REPO = Path(__file__).resolve().parents[2]
REQUIRED = os.environ.get("PBIDR_REQUIRE_BROWSER") == "1"
BACKGROUND = 235  # a pixel with every channel above this is the page's white background


def _unavailable(why: str):
    if REQUIRED:
        pytest.fail(f"{why}; PBIDR_REQUIRE_BROWSER=1 says this run must test the page in a browser")
    pytest.skip(why)


@pytest.fixture(scope="module")
def served(readme_run):
    """``pbidr view -i out --port 0`` as a user runs it; its URL once the meshes are on the page."""
    try:
        import viser  # noqa: F401
        import websockets  # noqa: F401
    except ImportError:
        _unavailable("the viewer extra is not installed (pip install -e .[view])")
    if chromium_path() is None:
        _unavailable("no Chromium (apt-get install chromium)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "code")}
    proc = subprocess.Popen([sys.executable, "-m", "pbidr", "view", "-i", str(readme_run[0] / "out"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = _read_until(proc, "pbidr view: showing ", timeout=120)
    url = next(line.split("serving ", 1)[1].split()[0] for line in lines if "serving http" in line)
    assert url.startswith("http://127.0.0.1:"), lines  # localhost by default
    yield url
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "pbidr view: stopped" in rest, rest


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    lines: list[str] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith(marker):
                return lines
    proc.kill()
    raise AssertionError(f"pbidr view did not print {marker!r}: {lines}")


@pytest.fixture(scope="module")
def page(served):
    browser = Browser(chromium_path())
    try:
        t0 = time.perf_counter()
        browser.open(served)
        shot = _settle(browser, until=lambda s: _faces(s) >= 1)
        print(f"page loaded and drawn in {time.perf_counter() - t0:.1f} s")
        yield browser, shot
    finally:
        browser.close()


# ------------------------------------------------------------------------------------------------
# Reading screenshots


def _scene(shot: np.ndarray) -> np.ndarray:
    """The part of the page where the meshes are: left of the control panel, below the notices."""
    h, w, _ = shot.shape
    return shot[int(0.22 * h):int(0.8 * h), :int(0.73 * w)]


def _drawn(shot: np.ndarray) -> np.ndarray:
    """Mask of the scene's pixels that are not background."""
    return (_scene(shot) < BACKGROUND).any(axis=2)


def _slots(shot: np.ndarray) -> list[slice]:
    """The column ranges of the meshes standing side by side: runs of columns holding drawn pixels
    (labels excluded: a column counts when over 5% of it is drawn)."""
    columns = np.concatenate([[False], _drawn(shot).mean(axis=0) > 0.05, [False]])
    edges = np.flatnonzero(columns[1:] != columns[:-1])
    return [slice(a, b) for a, b in zip(edges[::2], edges[1::2])]


def _faces(shot: np.ndarray) -> int:
    return len(_slots(shot))


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (0-255) over the pixels drawn in either screenshot."""
    mask = _drawn(a) | _drawn(b)
    return float(np.abs(_scene(a).astype(float) - _scene(b).astype(float)).mean(axis=2)[mask].mean())


def _settle(browser: Browser, until=None, timeout: float = 60.0) -> np.ndarray:
    """Screenshots until ``until(shot)`` holds (when given) and three in a row agree: the page has drawn
    what it was sent. Returns the last one; the caller's assertions say whether it is right (after
    ``timeout`` it is whatever the page shows then)."""
    t0, same, last = time.monotonic(), 0, None
    while time.monotonic() - t0 < timeout:
        shot = browser.screenshot()
        # the scene only: the panel has a blinking text cursor once a list was used
        same = same + 1 if last is not None and np.array_equal(_scene(shot), _scene(last)) else 0
        if same >= 2 and (until is None or until(shot)):
            return shot
        last = shot
        time.sleep(0.25)
    return last


def _changed(browser: Browser, before: np.ndarray, until=None) -> np.ndarray:
    """The page once it differs from ``before`` (and ``until`` holds) and has settled."""
    return _settle(browser, lambda s: _difference(s, before) > 1.0 and (until is None or until(s)), timeout=30)


def _saturation(shot: np.ndarray) -> float:
    """Mean colourfulness (max - min channel) of the drawn pixels."""
    return float(np.ptp(_scene(shot).astype(float), axis=2)[_drawn(shot)].mean())


def _blue_and_red(shot: np.ndarray) -> tuple[float, float]:
    """Fractions of the drawn pixels that are clearly blue, and clearly red (the displacement scale's ends)."""
    rgb = _scene(shot).astype(int)[_drawn(shot)]
    return float(((rgb[:, 2] - rgb[:, 0]) > 40).mean()), float(((rgb[:, 0] - rgb[:, 2]) > 40).mean())


# ------------------------------------------------------------------------------------------------
# Using the controls


def _control(browser: Browser, label: str) -> str:
    """JavaScript for the element a panel label names."""
    return (f"document.getElementById(Array.from(document.querySelectorAll('label'))"
            f".find(l => l.textContent.trim() === {label!r}).htmlFor)")


def _click_checkbox(browser: Browser, label: str) -> None:
    browser.click(*browser.centre_of(_control(browser, label)))


def _wait_for(condition, timeout: float) -> bool:
    """Poll ``condition()`` every 0.1 s until it holds (True) or ``timeout`` seconds pass (False)."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 >= timeout:
            return False
        time.sleep(0.1)
    return True


def _choose(browser: Browser, label: str, option: str) -> None:
    browser.click(*browser.centre_of(_control(browser, label)))
    find = f"Array.from(document.querySelectorAll('[role=option]')).find(o => o.textContent.trim() === {option!r})"
    assert _wait_for(lambda: browser.js(f"!!({find})"), 10), f"the {label} list did not open"
    browser.click(*browser.centre_of(find))


def _slide(browser: Browser, label: str, fraction: float, tries: int = 3) -> None:
    """Click the slider's track at ``fraction`` of its length, and wait (up to 5 s) until the slider says
    its value changed. The page's panel may still be laying itself out (a CI run once clicked a track that
    was about to move): then the track is measured and clicked again, up to ``tries`` times. The caller
    asserts the value it expects."""
    track = f"{_control(browser, label)}.querySelector('.mantine-Slider-track')"
    old = _value(browser, label)
    for _ in range(tries):
        box = browser.js(f"(() => {{ const r = {track}.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }})()")
        browser.click(box[0] + fraction * box[2], box[1] + box[3] / 2)
        if _wait_for(lambda: _value(browser, label) != old, 5.0):
            return


def _value(browser: Browser, label: str) -> str:
    return browser.js(f"{_control(browser, label)}.querySelector('[role=slider]').getAttribute('aria-valuenow')")


# ------------------------------------------------------------------------------------------------


def test_the_meshes_are_drawn_side_by_side_and_offline(page, served):
    browser, shot = page
    assert _drawn(shot).mean() > 0.05  # the faces' pixels differ from the background
    assert _faces(shot) == 4  # coarse, detailed, dense, truth
    text = browser.js("document.body.innerText")
    assert "recovered fraction" in text and "PSNR" in text and "displacement" in text
    hosts = {u.split("/")[2] for u in browser.requests if u.startswith(("http:", "https:", "ws:", "wss:"))}
    assert hosts == {served.split("/")[2]}, hosts  # the page asked nothing of any other host


def test_moving_the_light_relights_every_mesh(page):
    browser, _ = page
    before = _settle(browser)
    _slide(browser, "Light azimuth", 0.1)  # from the viewer's right (+60 degrees) to about -144 (behind left)
    assert int(_value(browser, "Light azimuth")) < -100
    after = _changed(browser, before)
    assert _difference(before, after) > 15.0
    # every mesh relit, not one
    change = np.abs(_scene(after).astype(float) - _scene(before).astype(float)).mean(axis=2)
    drawn = _drawn(after) | _drawn(before)
    per_mesh = [float(change[:, cols][drawn[:, cols]].mean()) for cols in _slots(before)]
    assert len(per_mesh) == 4 and min(per_mesh) > 5.0, per_mesh
    _slide(browser, "Light elevation", 0.9)  # from 20 degrees to about 78: from above
    assert _difference(after, _changed(browser, after)) > 5.0
    from pbidr.view.page import LIGHT_AZIMUTH, LIGHT_ELEVATION

    _slide(browser, "Light azimuth", (LIGHT_AZIMUTH + 180) / 360)  # back to the raking light of the start
    _slide(browser, "Light elevation", (LIGHT_ELEVATION + 30) / 120)
    _changed(browser, after)


def test_the_toggles_change_what_is_drawn(page):
    browser, _ = page
    start = _settle(browser)
    assert _faces(start) == 4
    _click_checkbox(browser, "truth (sample)")
    without_truth = _changed(browser, start, until=lambda s: _faces(s) == 3)
    assert _faces(without_truth) == 3
    _click_checkbox(browser, "truth (sample)")
    textured = _changed(browser, without_truth, until=lambda s: _faces(s) == 4)
    assert _faces(textured) == 4

    _choose(browser, "Surface", "clay")
    clay = _changed(browser, textured, until=lambda s: _saturation(s) < 0.5 * _saturation(textured))
    assert _saturation(clay) < 0.5 * _saturation(textured)  # albedo off: grey
    _choose(browser, "Surface", "displacement")
    coloured = _changed(browser, clay, until=lambda s: min(_blue_and_red(s)) > 0.005)
    assert min(_blue_and_red(coloured)) > 0.005, _blue_and_red(coloured)  # both ends of the scale on the faces
    assert "displacement along the coarse normal (mm)" in browser.js("document.body.innerText")

    _choose(browser, "Layout", "overlaid")
    overlaid = _changed(browser, coloured, until=lambda s: _faces(s) == 1)
    assert _faces(overlaid) == 1
    _choose(browser, "Layout", "side by side")
    _choose(browser, "Surface", "textured")
    assert _faces(_changed(browser, overlaid, until=lambda s: _faces(s) == 4)) == 4


def test_readme_picture(page):
    """docs/view.png, README's picture of the page, when PBIDR_VIEW_SCREENSHOT=1."""
    if os.environ.get("PBIDR_VIEW_SCREENSHOT") != "1":
        pytest.skip("PBIDR_VIEW_SCREENSHOT=1 writes docs/view.png")
    browser, _ = page
    close = "document.querySelector('.mantine-Notification-closeButton')"
    if browser.js(f"!!{close}"):  # the notice that WebGL runs in software: true here, not for a user
        browser.click(*browser.centre_of(close))
    _choose(browser, "Surface", "clay")
    browser.click(60, 600)  # off the panel, so that no list keeps its text cursor in the picture
    _settle(browser)
    browser.save_screenshot(REPO / "docs" / "view.png")
