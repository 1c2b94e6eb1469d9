"""The service's page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium against a real ``emi serve``.

Selenium because its WebDriver client is the one with a stable, documented Python API
for what these tests do (clicks, file inputs, logs) and it drives the Debian browser by
path, offline (no driver download: the driver's path is given).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from manifests.synthetic import write_corpus
from tests.conftest import run_cli
from tests.served import Hosted
from tests.test_service import _same_predictions

NEEDS = (
    "the page's tests need Chromium and its WebDriver: apt-get install chromium "
    "chromium-driver (./run test installs them when run as root on Debian)"
)


def _browser(downloads: Path, width: int = 1280, height: int = 800):
    from selenium import webdriver

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, NEEDS
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    return browser


def _until(check, timeout_s: float = 60.0, what: str = "the page"):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except Exception:  # the element is being re-rendered: look again
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not there after {timeout_s} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_backbone):
    folder = tmp_path_factory.mktemp("page")
    root = folder / "root"
    splits = write_corpus(root / "corpus", clips=20, seed=31, min_seconds=1.0, max_seconds=2.0)
    write_corpus(root / "long", clips=24, seed=32, min_seconds=1.0, max_seconds=2.0)
    audio = root / "corpus" / "audio"
    served = Hosted(folder, [root], "--jobs", "1", "--part-seconds", "1")
    store = served.stores / "lab.zarr"
    run_cli("extract", audio, store, "--model", tiny_backbone, "--quiet")
    run_cli("train", store, "--labels", splits["train"], "--val-labels", splits["valid"],
            "--out", served.heads / "ml", "--preset", "mean-linear", "--quiet")  # fmt: skip
    downloads = folder / "downloads"
    downloads.mkdir()
    with served:
        served.start()
        browser = _browser(downloads)
        try:
            browser.get(served.url + "/")
            yield {"served": served, "browser": browser, "root": root, "audio": audio,
                   "downloads": downloads, "folder": folder, **splits}  # fmt: skip
            severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert severe == [], severe  # no console errors in the whole session
        finally:
            browser.quit()
        assert served.stop() == 0


def _by(browser, css: str):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, css)


def _job_card(browser, job_id: str):
    return _by(browser, f'[data-job="{job_id}"]')[0]


def _finished_card(browser, job_id: str, timeout_s: float = 60.0):
    """The job's card once it shows the job succeeded."""
    return _until(lambda: [c for c in _by(browser, f'[data-job="{job_id}"]')
                           if c.get_attribute("data-state") == "succeeded"], timeout_s,
                  "the job's end")[0]  # fmt: skip


def _audio_seconds(browser, audio) -> float:
    """The duration an audio element read from its source (once its metadata loaded)."""
    return browser.execute_script(
        "const a = arguments[0]; return new Promise((done) => a.readyState >= 1 ?"
        " done(a.duration) : a.addEventListener('loadedmetadata', () => done(a.duration)));",
        audio,
    )


def _latest_job(site) -> dict:
    return site["served"].client().jobs(limit=1)["jobs"][0]


def _choose_folder(browser, *names: str) -> None:
    _until(lambda: _by(browser, "#folders button"), what="the roots")[0].click()  # the root
    for name in names:
        _until(lambda n=name: [b for b in _by(browser, "#folders button") if b.text == f"{n}/"],
               what=f"folder {name}")[0].click()  # fmt: skip
        _until(lambda n=name: browser.find_element("id", "folder-path").text.endswith(f"/{n}"))


@pytest.mark.slow
def test_the_page_lists_heads_scores_a_folder_and_downloads_emi_scores_csv(
    site, tmp_path, monkeypatch
):
    browser, client = site["browser"], site["served"].client()
    rows = _until(lambda: _by(browser, "#heads tbody tr[data-head]"), what="the heads table")
    [head] = client.heads()
    assert rows[0].get_attribute("data-head") == "ml"
    assert f"{head['val_pearson_mean']:.3f}" in rows[0].text and "last" in rows[0].text
    _choose_folder(browser, "corpus", "audio")
    assert "20 audio files" in browser.find_element("id", "folder-note").text
    browser.find_element("id", "score-submit").click()
    job = _until(lambda: [j for j in client.jobs()["jobs"] if j["kind"] == "score"], what="a job")[
        0
    ]
    card = _until(
        lambda: [c for c in _by(browser, f'[data-job="{job["id"]}"]')
                 if c.get_attribute("data-state") == "succeeded"], 120, "the job's end",
    )[0]  # fmt: skip
    bar = _by(card, "progress")[0]
    assert bar.get_attribute("value") == bar.get_attribute("max") == "20"
    assert "20 of 20 clips done" in card.text
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
    browser.save_screenshot(str(site["folder"] / "page-finished-job.png"))  # a test artifact
    [button] = [b for b in _by(card, "button") if b.text == "Download CSV"]
    button.click()
    csv_file = _until(lambda: [p for p in site["downloads"].glob("*.csv")], what="the download")[0]
    assert csv_file.name == f"audio-{job['id']}.csv"  # the folder and the job
    _check_results_table(browser, card, client.predictions(job["id"])["predictions"])
    monkeypatch.setenv("EMI_CACHE", str(tmp_path / "cache"))
    run_cli("score", site["audio"], "--head", site["served"].heads / "ml", "-o",
            tmp_path / "cli.csv", "--quiet")  # fmt: skip
    expected = (tmp_path / "cli.csv").read_bytes().decode()
    _same_predictions(csv_file.read_bytes().decode(), expected)


def _check_results_table(browser, card, rows: list[dict]) -> None:
    """The finished job's predictions on the page: a page of rows from the service,
    sorted there by any column, filtered by clip id, each target's distribution, and a
    row that opens its clip (audio, valence/arousal/dominance over time, intensities)."""
    import numpy as np

    _by(card, "details.results summary")[0].click()
    table = _until(lambda: _by(card, "table.predictions tbody tr[data-clip]"), what="the rows")
    assert len(table) == min(25, len(rows))
    assert table[0].get_attribute("data-clip") == min(r["clip_id"] for r in rows)
    assert _by(card, ".pager .range")[0].text == f"clips 1-{min(25, len(rows))} of {len(rows)}"
    [sort_joy] = [b for b in _by(card, "table.predictions thead button") if b.text == "Joy"]
    sort_joy.click()
    lowest = min(rows, key=lambda r: (r["Joy"], r["clip_id"]))["clip_id"]
    _until(lambda: _by(card, "table.predictions tbody tr")[0].get_attribute("data-clip") == lowest,
           what="sorted by Joy")  # fmt: skip
    joy = _until(lambda: [f for f in _by(card, "figure.dist") if "Joy" in f.text])[0].text
    assert f"median {np.median([r['Joy'] for r in rows]):.2f}" in joy
    wanted = rows[3]["clip_id"]
    _by(card, ".controls input[type=search]")[0].send_keys(wanted)
    matching = [c["clip_id"] for c in rows if wanted in c["clip_id"]]
    _until(lambda: [r.get_attribute("data-clip") for r in _by(card, "tbody tr[data-clip]")]
           == matching, what="the filter")  # fmt: skip
    _by(card, f'tbody tr[data-clip="{wanted}"]')[0].click()
    clip = _until(lambda: [c for c in _by(card, ".clip") if c.get_attribute("data-loaded-ms")],
                  what="the clip")[0]  # fmt: skip
    assert _by(clip, "audio")[0].get_attribute("src").endswith(f"clip_id={wanted}")
    series = {s.get_attribute("data-series") for s in _by(clip, "svg.vad polyline")}
    assert series == {"valence", "arousal", "dominance"}
    [row] = [r for r in rows if r["clip_id"] == wanted]
    shown = [c.text for c in _by(clip, "table.intensities tbody td")]
    assert shown == [f"{row[t]:.3f}" for t in row if t != "clip_id"]
    assert _audio_seconds(browser, _by(clip, "audio")[0]) > 0.5  # the browser reads the audio


def test_a_running_job_is_cancelled_from_the_page(site):
    browser, client = site["browser"], site["served"].client()
    job = client.submit({"kind": "score", "source": str(site["root"] / "long" / "audio"),
                         "heads": ["ml"]})  # fmt: skip
    _until(lambda: client.job(job["id"])["progress"].get("clips_done", 0) >= 1, what="a start")
    card = _until(lambda: _job_card(browser, job["id"]), what="the job's card")
    [cancel] = [b for b in _by(card, "button") if b.text == "Cancel"]
    cancel.click()
    _until(lambda: _job_card(browser, job["id"]).get_attribute("data-state") == "cancelled",
           60, "cancelled")  # fmt: skip
    done = client.job(job["id"])
    assert done["state"] == "cancelled" and 0 < done["progress"]["clips_done"] < 24
    kept = done["result"]["predicted"]
    state = _by(_job_card(browser, job["id"]), ".state")[0].text
    assert state == f"cancelled: {kept} of 24 clips finished and kept"


def test_two_files_uploaded_by_the_page_are_scored(site):
    browser, client = site["browser"], site["served"].client()
    wavs = sorted(site["audio"].glob("*.wav"))[:2]
    _until(lambda: "1024 MiB per file" in browser.find_element("id", "limits").text)  # before
    note = site["folder"] / "notes.txt"
    note.write_text("not audio")
    browser.find_element("id", "files").send_keys("\n".join(str(f) for f in [*wavs, note]))
    assert browser.find_element("id", "source-files").is_selected()
    chosen = browser.find_element("id", "chosen-files").text
    assert chosen.endswith("Will be skipped (not audio, video, CSV or an archive): notes.txt")
    browser.find_element("id", "score-submit").click()
    job = _until(
        lambda: [j for j in client.jobs()["jobs"]
                 if str(j["request"].get("source", "")).startswith("upload-")]
    )[0]  # fmt: skip
    _until(lambda: _job_card(browser, job["id"]).get_attribute("data-state") == "succeeded", 60)
    rows = client.predictions(job["id"])["predictions"]
    assert [r["clip_id"] for r in rows] == [w.stem for w in wavs]
    named = f"2 files: {wavs[0].name}, {wavs[1].name}"
    _until(lambda: named in _by(_job_card(browser, job["id"]), ".what")[0].text, 10, "its files")
    said = browser.find_element("id", "chosen-files").text
    assert said.startswith(f"Uploaded {named}") and said.endswith("notes.txt")
    assert browser.execute_script("return document.getElementById('files').files.length") == 0


def test_a_train_jobs_learning_curve_grows_on_the_page(site):
    browser, client = site["browser"], site["served"].client()
    job = client.submit({"kind": "train", "store": "lab", "labels": str(site["train"]),
                         "val_labels": str(site["valid"]), "name": "curve", "preset": "compact",
                         "epochs": 3})  # fmt: skip
    _until(lambda: _job_card(browser, job["id"]).get_attribute("data-state") == "succeeded", 120)
    card = _job_card(browser, job["id"])
    [line] = _by(card, "svg.curve polyline")
    assert len(line.get_attribute("points").split()) == 3  # one point per epoch
    best = client.job(job["id"])["result"]["best"]["val_pearson_mean"]
    assert f"{best:.3f}" in _by(card, "figcaption")[0].text
    _until(lambda: _by(browser, '#heads tbody tr[data-head="curve"]'), 15, "the new head")
    # a train job that fails before its first epoch says so and why, in plain words
    wrong = site["root"] / "labels-of-nothing.csv"
    wrong.write_text("Filename,Joy\nnot-a-clip,0.5\n")
    failed = client.submit({"kind": "train", "store": "lab", "labels": str(wrong),
                            "val_labels": str(wrong), "name": "never"})  # fmt: skip
    _until(lambda: _job_card(browser, failed["id"]).get_attribute("data-state") == "failed", 60)
    text = _job_card(browser, failed["id"]).text
    assert "failed before its first epoch" in text and "epoch 0" not in text
    assert "problem with the audio or labels: " in text and "Error" not in text, text
    extract = client.submit({"kind": "extract", "source": str(site["audio"]), "store": "lab"})
    assert "into store lab" in _until(lambda: _job_card(browser, extract["id"])).text


def test_a_job_with_a_failed_clip_says_so_and_the_heads_say_what_they_are(site):
    browser, client = site["browser"], site["served"].client()
    mixed = site["root"] / "mixed"
    mixed.mkdir()
    for wav in sorted(site["audio"].glob("*.wav"))[:3]:
        shutil.copy(wav, mixed / wav.name)
    (mixed / "broken.wav").write_bytes(b"RIFF\x00\x01WAVEnot audio")
    job = client.submit({"kind": "score", "source": str(mixed), "heads": ["ml"]})
    card = _until(lambda: [c for c in _by(browser, f'[data-job="{job["id"]}"]')
                           if c.get_attribute("data-state") == "succeeded"], 60)[0]  # fmt: skip
    assert _by(card, ".state")[0].text == "succeeded, 1 of 4 clips failed"
    assert "partial" in card.get_attribute("class")  # not the plain green of a clean run
    assert "1 failed clip" in card.text
    row = _by(browser, '#heads tbody tr[data-head="ml"]')[0]
    assert "straight line (ridge regression)" in row.text
    [head] = [h for h in client.heads() if h["name"] == "ml"]
    assert f"on {head['val_clips']} validation clips" in row.get_attribute("textContent")
    listing = httpx.get(f"{site['served'].url}/v1/heads", timeout=30).json()
    assert listing["comparable"]  # every head here was validated on the corpus's split
    best = _by(browser, f'#heads tbody tr[data-head="{listing["recommended"]}"]')[0]
    assert [b.text for b in _by(browser, "#heads .badge.good")] == ["recommended"]
    assert "recommended" in best.text
    said = _by(browser, "#heads-comparison")[0].text
    assert said == f"Recommended: {listing['recommended']}, {listing['comparison']}."
    assert "random backbone" in row.text  # the demo's and the tests' heads measure the pipeline
    notes = [n.text for n in _by(browser, "#heads thead .col-note")]
    assert any("mean Pearson r" in n and "higher is better" in n for n in notes)


@pytest.mark.slow
def test_extract_and_train_jobs_start_from_the_page(site):
    """The page's forms: extract the chosen folder into a store, then train a head on
    it; the head shows up in the heads table."""
    from selenium.webdriver.support.ui import Select

    browser, client = site["browser"], site["served"].client()

    def submitted(kind: str, field: str, value: str) -> dict:
        return _until(lambda: [j for j in client.jobs()["jobs"] if j["kind"] == kind
                               and j["request"][field] == value], what=kind)[0]  # fmt: skip

    browser.get(site["served"].url + "/")  # the folder browser at the roots again
    _choose_folder(browser, "corpus", "audio")
    browser.find_element("id", "extract-store").send_keys("lab")  # the service's store
    browser.find_element("id", "extract-submit").click()
    _finished_card(browser, submitted("extract", "source", str(site["audio"]))["id"])
    _until(lambda: _by(browser, '#train-store option[value="lab"]'), 15, "the store")
    Select(browser.find_element("id", "train-store")).select_by_value("lab")
    browser.find_element("id", "train-labels").send_keys(str(site["train"]))
    browser.find_element("id", "train-val-labels").send_keys(str(site["valid"]))
    browser.find_element("id", "train-name").send_keys("from-page")
    Select(browser.find_element("id", "train-preset")).select_by_value("mean-linear")
    browser.find_element("id", "train-submit").click()
    trained = submitted("train", "name", "from-page")
    _finished_card(browser, trained["id"])
    _until(lambda: _by(browser, '#heads tbody tr[data-head="from-page"]'), 15, "the new head")
    assert client.job(trained["id"])["request"]["preset"] == "mean-linear"


def test_a_selection_survives_the_polling(site):
    browser, client = site["browser"], site["served"].client()
    job = client.submit({"kind": "score", "source": str(site["audio"]), "heads": ["ml"]})
    _until(lambda: client.job(job["id"])["state"] == "succeeded", 60)
    card = _until(lambda: _job_card(browser, job["id"]), what="the card")
    ident = _by(card, "code.id")[0]
    browser.execute_script(
        "const range = document.createRange(); range.selectNodeContents(arguments[0]);"
        "const s = window.getSelection(); s.removeAllRanges(); s.addRange(range);",
        ident,
    )
    time.sleep(3.0)  # three polls of the job list
    assert browser.execute_script("return window.getSelection().toString()") == job["id"]
    assert _job_card(browser, job["id"]) == card  # the same element, updated in place


WORDS_FIT = """
const bad = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
while (walker.nextNode()) {
  const node = walker.currentNode, box = node.parentElement;
  if (!box || !box.getClientRects().length || box.closest("[hidden]")) continue;
  const edge = box.getBoundingClientRect();
  for (const m of node.textContent.matchAll(/\\S+/g)) {
    const range = document.createRange();
    range.setStart(node, m.index);
    range.setEnd(node, m.index + m[0].length);
    const rects = [...range.getClientRects()].filter((r) => r.width > 0);
    if (!rects.length) continue;
    if (rects.length > 1) bad.push(`"${m[0]}" broken inside <${box.tagName.toLowerCase()}>`);
    else if (rects[0].right > edge.right + 1 || rects[0].left < edge.left - 1)
      bad.push(`"${m[0]}" wider than its <${box.tagName.toLowerCase()}>`);
  }
}
return bad;
"""


def _requested(browser) -> list[str]:
    """The URLs the browser's pages asked for since the log was last read."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _outside(urls: list[str], origin: str) -> list[str]:
    return [u for u in urls if not u.startswith((origin + "/", "data:", "blob:"))]


# Every header, cell and head tab of the predictions: a box narrower than its text (cut),
# a word over two lines (broken), a table wider than its place, or a page wider than the
# window; the headers' and labels' words as shown.
_LAYOUT_FAULTS = """
const card = arguments[0], faults = [];
const boxes = card.querySelectorAll(
  "table.predictions th, table.predictions td, table.predictions th button, .switcher .tab");
for (const box of boxes) {
  if (!box.getClientRects().length) continue;  // not shown at this width
  if (box.scrollWidth > box.clientWidth + 1) faults.push(`cut: ${box.textContent}`);
  const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (const word of node.textContent.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(node, word.index);
      range.setEnd(node, word.index + word[0].length);
      const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
      if (lines.size > 1) faults.push(`broken: ${word[0]}`);
    }
  }
}
const wrap = card.querySelector(".predictions-view .table-wrap");
if (wrap.scrollWidth > wrap.clientWidth + 1) faults.push(`the table scrolls: ${wrap.scrollWidth}`);
if (document.documentElement.scrollWidth > window.innerWidth + 1) faults.push("the page scrolls");
const head = card.querySelector("table.predictions thead");
const shown = getComputedStyle(head).display !== "none"
  ? [...head.querySelectorAll("button")].map((b) => b.textContent.replace(/ [\\u25b2\\u25bc]$/, ""))
  : [...card.querySelector("table.predictions tbody tr[data-clip]").querySelectorAll("td")]
      .map((td) => td.dataset.label);
return { faults, cards: getComputedStyle(head).display === "none", shown };
"""


@pytest.mark.slow
def test_two_heads_predictions_are_readable_from_360_to_1440_px(site):
    browser, client = site["browser"], site["served"].client()
    heads = site["served"].heads
    shutil.copytree(heads / "ml", heads / "mean-linear-twin")
    job = client.submit({"kind": "score", "source": str(site["audio"]),
                         "heads": ["ml", "mean-linear-twin"]})  # fmt: skip
    card = _until(lambda: [c for c in _by(browser, f'[data-job="{job["id"]}"]')
                           if c.get_attribute("data-state") == "succeeded"], 60)[0]  # fmt: skip
    _by(card, "details.results summary")[0].click()
    _until(lambda: _by(card, "table.predictions tbody tr[data-clip]"), what="the rows")
    tabs = _by(card, ".switcher .tab")
    assert [t.text for t in tabs] == ["ml", "mean-linear-twin"]
    tabs[1].click()  # the second head's table: its own values
    _until(lambda: tabs[1].get_attribute("aria-selected") == "true")
    targets = ["Admiration", "Amusement", "Determination", "Empathic Pain", "Excitement", "Joy"]
    try:
        for width in (360, 420, 768, 1280, 1440):
            browser.set_window_size(width, 900)
            _until(lambda w=width: browser.execute_script("return window.innerWidth") <= w)
            found = browser.execute_script(_LAYOUT_FAULTS, card)
            assert found["faults"] == [], (width, found["faults"])
            assert found["shown"] == (targets if found["cards"] else ["Clip", *targets]), width
            assert found["cards"] == (width <= 820), width  # cards where the table would crowd
            browser.execute_script("arguments[0].scrollIntoView()", card)
            browser.save_screenshot(str(site["folder"] / f"predictions-{width}px.png"))
    finally:
        browser.set_window_size(1280, 800)


@pytest.mark.slow
def test_the_api_pages_make_no_request_outside_their_origin(site):
    """/docs (Swagger UI) and /redoc, rendered whole in the browser: every request they
    make goes to the service (Redoc's bundle asked a CDN for its logo before)."""
    browser, origin = site["browser"], site["served"].url
    _requested(browser)  # drained: what follows is these pages' own
    try:
        for path, rendered in (("/docs", ".swagger-ui .opblock"),
                               ("/redoc", "[data-section-id]")):  # fmt: skip
            browser.get(origin + path)
            _until(lambda css=rendered: _by(browser, css), what=path)
            time.sleep(1.0)  # images and fonts a rendered page asks for late
            urls = _requested(browser)
            assert any(u.startswith(origin + "/openapi.json") for u in urls), (path, urls)
            assert _outside(urls, origin) == [], path
    finally:
        browser.get(origin + "/")
        _until(lambda: _by(browser, "#heads tbody tr[data-head]"))


def test_the_page_makes_no_request_outside_its_origin_and_fits_a_narrow_window(site):
    browser = site["browser"]
    origin = site["served"].url
    urls = _requested(browser)
    assert urls and _outside(urls, origin) == [], _outside(urls, origin)
    try:
        for width in (420, 1280):  # a phone held upright, a laptop
            browser.set_window_size(width, 900)
            browser.refresh()
            _until(lambda: _by(browser, "#heads tbody tr[data-head]"))
            _until(lambda: _by(browser, "#jobs [data-job]"), what="the jobs")
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, width
            table = _by(browser, "#heads")[0]
            assert table.size["width"] <= width  # every column in view, no sideways scroll
            assert browser.execute_script(WORDS_FIT) == [], width
            browser.set_window_size(width, 2400)  # the whole page in the screenshot
            browser.save_screenshot(str(site["folder"] / f"page-{width}.png"))
    finally:
        browser.set_window_size(1280, 800)


@pytest.mark.slow
def test_with_a_token_file_the_page_shows_nothing_until_the_token_is_given(tmp_path, tiny_backbone):
    good = "page-token-0123456789abcdef"
    (tmp_path / "tokens").write_text(good + "\n")
    root = tmp_path / "root"
    splits = write_corpus(root / "corpus", clips=12, seed=41, min_seconds=1.0, max_seconds=2.0)
    served = Hosted(tmp_path, [root], "--token-file", tmp_path / "tokens", token=good)
    store = served.stores / "lab.zarr"  # a managed store: the score job reads it
    run_cli("extract", root / "corpus" / "audio", store, "--model", tiny_backbone, "--quiet")
    with served:
        served.start()
        browser = _browser(tmp_path)
        try:
            browser.get(served.url + "/")
            field = _until(lambda: [f for f in _by(browser, "#token-input") if f.is_displayed()])[0]
            assert not browser.find_element("id", "main").is_displayed()
            assert _by(browser, "#heads tbody tr") == [] and _by(browser, "#jobs li") == []
            field.send_keys("wrong-token-0123456789")
            browser.find_element("css selector", "#token-form button").click()
            _until(lambda: "refused" in browser.find_element("id", "token-error").text)
            assert not browser.find_element("id", "main").is_displayed()
            field.send_keys(good)
            browser.find_element("css selector", "#token-form button").click()
            _until(lambda: browser.find_element("id", "main").is_displayed(), what="the page")
            _until(
                lambda: "No heads in the registry yet" in browser.find_element("id", "heads").text
            )
            stored = browser.execute_script("return sessionStorage.getItem('emi-token')")
            assert stored == good
            assert browser.execute_script("return localStorage.length") == 0
            # a head trained now shows up; a clip opens and plays with the token
            run_cli("train", store, "--labels", splits["train"], "--val-labels", splits["valid"],
                    "--out", served.heads / "ml", "--preset", "mean-linear", "--quiet")  # fmt: skip
            _until(lambda: _by(browser, '#heads tbody tr[data-head="ml"]'), 30, "the new head")
            client = served.client()
            job = client.submit({"kind": "score", "source": str(root / "corpus" / "audio"),
                                 "heads": ["ml"]})  # fmt: skip
            card = _finished_card(browser, job["id"])
            _by(card, "details.results summary")[0].click()
            _until(lambda: _by(card, "tbody tr[data-clip]"), what="the rows")[0].click()
            audio = _until(lambda: _by(card, ".clip audio"), what="the clip's audio")[0]
            assert audio.get_attribute("src").startswith("blob:")  # fetched with the token
            assert _audio_seconds(browser, audio) > 0.5
            plain = httpx.get(f"{served.url}{client.job(job['id'])['result']['predictions_json']}")
            assert plain.status_code == 401  # and without it, nothing
        finally:
            browser.quit()
        assert served.stop() == 0
    assert os.environ.get("EMI_TOKEN") is None  # nothing leaked into the test's process


@pytest.mark.slow
def test_the_docs_search_works_from_the_built_folder_opened_as_files(tmp_path):
    import subprocess
    import sys

    from selenium.webdriver.common.by import By

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        check=True, cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    browser = _browser(tmp_path)
    try:
        browser.get((site / "service.html").as_uri())  # a page below the top, as files
        box = _until(lambda: browser.find_element(By.CSS_SELECTOR, "input.md-search__input"))
        browser.execute_script("arguments[0].focus()", box)
        box.send_keys("fingerprint")
        found = _until(lambda: _by(browser, ".md-search-result__item"), what="the search's results")
        assert len(found) >= 3
        links = [a.get_attribute("href") for a in _by(browser, ".md-search-result__link")]
        assert links and all(link.startswith("file://") for link in links)
        requested = [
            json.loads(e["message"])["message"]["params"]["request"]["url"]
            for e in browser.get_log("performance")
            if json.loads(e["message"])["message"]["method"] == "Network.requestWillBeSent"
        ]
        assert requested and all(url.startswith(("file://", "data:")) for url in requested)
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
    finally:
        browser.quit()
