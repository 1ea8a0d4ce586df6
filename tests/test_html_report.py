"""The HTML report (`--report run.html`), built from real small runs and opened in headless Chromium."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from installed import DINAT
from PIL import Image
from small_model import save_checkpoint

from dinat_cli import evaluation, html_report, reports
from dinat_cli.io import DecodedImage, read_image
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.pipeline import RestoreRequest, restore_files

OPTIONS = EngineOptions(device="cpu")


def _smooth(height: int, width: int, seed: int, channels: int = 3, peak: int = 255) -> np.ndarray:
    """A gradient with a little noise: photo-like, so that lossy previews stay close to it."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0.1, 0.5, height), np.linspace(0.0, 0.4, width))
    layers = [ramp + 0.1 * index for index in range(channels)]
    image = np.stack(layers, axis=2) + rng.normal(0, 0.01, (height, width, channels))
    image = np.clip(image, 0, 1) * peak
    return np.rint(image[..., 0] if channels == 1 else image).astype(np.uint8 if peak == 255 else np.uint16)


def _inputs(root: Path) -> tuple[Path, Path]:
    """An 8-bit, a 16-bit and a grey image, one file that is no image; ground truth for the first two."""
    source, gt = root / "in", root / "gt"
    (source / "sub").mkdir(parents=True)
    (gt / "sub").mkdir(parents=True)
    cv2.imwrite(str(source / "a.png"), _smooth(48, 64, 1))
    cv2.imwrite(str(source / "sub" / "b.png"), _smooth(40, 56, 2, peak=65535))
    cv2.imwrite(str(source / "c.png"), _smooth(32, 40, 3, channels=1))
    (source / "d.png").write_bytes(b"not an image at all")
    cv2.imwrite(str(gt / "a.png"), _smooth(48, 64, 11))
    cv2.imwrite(str(gt / "sub" / "b.png"), _smooth(40, 56, 12, peak=65535))
    return source, gt


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    """A real run written as run.html, and its document as its JSON report holds it."""
    root = tmp_path_factory.mktemp("html")
    checkpoint = save_checkpoint(root / "net.pth")
    source, gt = _inputs(root)
    page = root / "report" / "run.html"
    page.parent.mkdir()
    request = RestoreRequest("denoise", source, root / "out", ModelSource(checkpoint), OPTIONS, gt=gt, report=page)
    document = json.loads(reports.dumps_json(restore_files(request).document))
    return page, document


def _chromium() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no Chromium or chromedriver on PATH (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    browser_path, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    # performance: the DevTools network events, which name every request the page makes.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser, page: Path) -> None:
    browser.get(page.as_uri())
    browser.get_log("browser")  # start each test's logs afresh
    browser.get_log("performance")


def _by_css(browser, selector: str):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def test_every_file_is_on_the_page_with_the_scores_of_the_json_report(run, browser) -> None:
    page, document = run
    _open(browser, page)
    rows = document["files"]
    assert [row["name"] for row in rows] == ["a.png", "c.png", "d.png", "sub/b.png"]
    cards = {card.get_attribute("data-name"): card for card in _by_css(browser, ".card")}
    table = [row.get_attribute("data-name") for row in _by_css(browser, "#files tbody tr")]
    assert sorted(cards) == sorted(table) == sorted(row["name"] for row in rows)
    scored = [row for row in rows if "psnr" in row]
    assert [row["name"] for row in scored] == ["a.png", "sub/b.png"]
    for row in scored:
        for metric in ("psnr", "ssim"):
            assert float(cards[row["name"]].get_attribute(f"data-{metric}")) == row[metric]
    # The gain is the output's PSNR less the input's, both against the same ground truth.
    for row in _by_css(browser, "#files tbody tr"):
        report_row = next(item for item in rows if item["name"] == row.get_attribute("data-name"))
        gain = row.get_attribute("data-gain")
        if "input_psnr" in report_row:
            assert float(gain) == pytest.approx(report_row["psnr"] - report_row["input_psnr"], abs=1e-12)
        else:
            assert gain == ""
    failed = cards["d.png"]
    assert failed.get_attribute("data-status") == "failed"
    assert "not a readable image" in failed.text and not failed.find_elements("css selector", "img")
    assert "no ground truth for c.png" in cards["c.png"].text
    header = browser.find_element("css selector", "header").text
    assert "4 planned: 3 done, 0 skipped, 1 failed, 0 not started" in header
    assert f"PSNR {document['summary']['mean']['psnr']:.2f}" in header


def test_the_slider_moves_with_the_arrow_keys(run, browser) -> None:
    from selenium.webdriver.common.keys import Keys

    page, _ = run
    _open(browser, page)
    card = _by_css(browser, ".card")[0]
    slider = card.find_element("css selector", ".slider")
    divider = card.find_element("css selector", ".divider")
    frame = card.find_element("css selector", ".compare")
    start = divider.location["x"]
    slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    assert slider.get_attribute("value") == "53"
    assert browser.execute_script("return arguments[0].style.getPropertyValue('--pos')", frame) == "53%"
    assert divider.location["x"] > start
    slider.send_keys(Keys.HOME)
    assert browser.execute_script("return arguments[0].style.getPropertyValue('--pos')", frame) == "0%"
    from selenium.webdriver.common.action_chains import ActionChains

    # A click (or a drag, with a mouse or a finger) on the image puts the divider there: a quarter in.
    ActionChains(browser).move_to_element_with_offset(frame, -frame.size["width"] // 4, 0).click().perform()
    assert abs(int(slider.get_attribute("value")) - 25) <= 2


def test_sorting_by_score_puts_the_worst_first_and_the_filter_shows_one_status(run, browser) -> None:
    page, document = run
    _open(browser, page)
    scored = sorted((row for row in document["files"] if "psnr" in row), key=lambda row: row["psnr"])
    button = browser.find_element("css selector", "th button[data-key=score]")
    button.click()
    names = [row.get_attribute("data-name") for row in _by_css(browser, "#files tbody tr")]
    assert names[: len(scored)] == [row["name"] for row in scored]  # unscored files last
    button.click()
    names = [row.get_attribute("data-name") for row in _by_css(browser, "#files tbody tr")]
    assert names[: len(scored)] == [row["name"] for row in reversed(scored)]
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", "#status-filter")).select_by_value("failed")
    shown = [row.get_attribute("data-name") for row in _by_css(browser, "#files tbody tr") if row.is_displayed()]
    cards = [card.get_attribute("data-name") for card in _by_css(browser, ".card") if card.is_displayed()]
    assert shown == cards == ["d.png"]


def test_the_page_loads_only_files_of_its_folder_and_logs_no_error(run, browser) -> None:
    page, _ = run
    browser.get_log("performance")
    browser.get(page.as_uri())
    for toggle in _by_css(browser, ".heat-toggle"):
        toggle.click()  # the heat maps load on demand
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    browser.execute_script("return Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
    links = browser.execute_script(
        "return [...document.querySelectorAll('[src],[href]')]"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'))"
    )
    assert links and all(link.startswith(("run_files/", "#")) and ".." not in link for link in links)
    images = browser.execute_script("return [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert all(width > 0 for _, width in images), images  # every preview is there and decodes
    assert {src for src, _ in images} == {f"run_files/{path.name}" for path in (page.parent / "run_files").iterdir()}
    events = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    requested = {
        event["params"]["request"]["url"] for event in events if event["method"] == "Network.requestWillBeSent"
    }
    folder = (page.parent / "run_files").as_uri() + "/"
    assert page.as_uri() in requested and {url for url in requested if not url.startswith(folder)} == {page.as_uri()}
    assert len(requested) == 1 + len(images)
    assert [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")] == []


def test_a_screenshot_shows_the_page_and_it_fits_a_phone(run, browser) -> None:
    page, _ = run
    _open(browser, page)
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L"), dtype=np.float64)
    assert shot.std() > 20  # text and images, not a blank or one-colour page
    browser.set_window_size(390, 844)
    try:
        _open(browser, page)
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        browser.set_window_size(1280, 900)


def test_an_eval_page_shows_each_pair_with_its_scores(run, browser, tmp_path: Path) -> None:
    _, document = run
    done = [row for row in document["files"] if row["status"] == "done"]
    pairs = [evaluation.Pair(row["name"], Path(row["input"]), Path(row["output"])) for row in done]
    scored = json.loads(reports.dumps_json(evaluation.to_document(evaluation.score_pairs(pairs, jobs=1))))
    reports.write_report(tmp_path / "eval.html", scored, rows_key="images", summary_key="mean")
    _open(browser, tmp_path / "eval.html")
    cards = {card.get_attribute("data-name"): card for card in _by_css(browser, ".card")}
    assert sorted(cards) == sorted(row["name"] for row in scored["images"])
    for row in scored["images"]:
        assert float(cards[row["name"]].get_attribute("data-psnr")) == row["psnr"]
        assert (
            cards[row["name"]]
            .find_element("css selector", "img.before")
            .get_attribute("alt")
            .startswith("ground truth of")
        )
    assert not _by_css(browser, "th button[data-key=gain]")  # no input, no gain: the column is left out
    assert [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")] == []


def test_previews_of_16_bit_and_grey_images_look_like_the_images(run) -> None:
    page, document = run
    folder = page.parent / "run_files"
    for index, row in enumerate(document["files"], 1):
        if row["status"] != "done":
            continue
        expected = html_report.display_rgb(read_image(Path(row["input"])))
        preview = np.asarray(Image.open(folder / f"{index}-before.webp").convert("RGB"), dtype=np.float64)
        assert preview.shape == expected.shape
        assert np.abs(preview - expected).mean() < 4, row["name"]  # lossy WebP; swapped channels: 51


def test_display_rgb_rounds_16_bits_to_8_and_shows_grey_as_grey() -> None:
    deep = DecodedImage(np.array([[[0, 257, 65535], [32896, 128, 129]]], dtype=np.uint16))
    np.testing.assert_array_equal(html_report.display_rgb(deep), [[[0, 1, 255], [128, 0, 1]]])
    grey = DecodedImage(np.array([[3, 200]], dtype=np.uint8), alpha=np.array([[0, 255]], dtype=np.uint8))
    np.testing.assert_array_equal(html_report.display_rgb(grey), [[[3, 3, 3], [200, 200, 200]]])


def test_the_crop_is_where_the_image_changed_most() -> None:
    difference = np.zeros((300, 500))
    difference[200:220, 400:430] = 50
    difference[10:12, 10:12] = 255  # brighter, but less change in all
    crop = html_report.most_changed_region(difference, 64)
    assert (crop.side_x, crop.side_y) == (64, 64)
    assert crop.x <= 400 and crop.x + 64 >= 430 and crop.y <= 200 and crop.y + 64 >= 220
    small = html_report.most_changed_region(np.ones((20, 30)), 64)
    assert (small.x, small.y, small.side_x, small.side_y) == (0, 0, 30, 20)


def test_the_commands_write_pages_with_their_previews(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "net.pth")
    source, gt = _inputs(tmp_path)
    (source / "d.png").unlink()
    result = subprocess.run(
        [*DINAT, "deblur", "--weights", checkpoint, source, tmp_path / "out", "--report", tmp_path / "run.html"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "run.html").read_text()
    assert "dinat deblur --weights" in page  # what ran
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() in page
    assert sorted(path.name for path in (tmp_path / "run_files").iterdir())[:5] == [
        f"1-{kind}.webp" for kind in ("after", "before", "crop-after", "crop-before", "heat")
    ]
    assert len(list((tmp_path / "run_files").iterdir())) == 15
    cv2.imwrite(str(tmp_path / "out" / "c.png"), _smooth(32, 40, 3, channels=1))  # ground truth of its own
    shutil.copy(source / "c.png", gt / "c.png")
    evaluation = subprocess.run(
        [*DINAT, "eval", "--gt", gt, "--pred", tmp_path / "out", "--report", tmp_path / "eval.html"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluation.returncode == 0, evaluation.stderr
    text = (tmp_path / "eval.html").read_text()
    assert text.count('class="card"') == 3 and "ground truth of sub/b.png" in text and "://" not in text
    assert len(list((tmp_path / "eval_files").iterdir())) == 15
