"""`diffice pairs`: the blinded reading sheet, clicked in a real headless browser, and the scoring."""

import csv
import json
import shutil
import time

import numpy as np
import pytest
from conftest import env_without_sanitizer_preload

from diffice.cli import main
from diffice.data.images import save_png
from diffice.evaluation.pairs import binomial_two_sided_p, key_path, make_sheet, score_answers


def results_folder(root, n, rng):
    """The layout diffice explain writes: records/<stem>.json, <stem>/input.png, <stem>/iteration_<k>.png."""
    for i in range(n):
        stem = f"case_{i}"
        x = rng.uniform(-1, 0, (1, 16, 20)).astype(np.float32)
        save_png(root / stem / "input.png", x)
        for k in (1, 2):
            save_png(root / stem / f"iteration_{k}.png", x + 0.5 * k)
        rows = [dict(iteration=0, prob_target=0.1)] + [
            dict(iteration=k, prob_target=0.9, flipped=k == 2 or i % 2, lambda_c=40.0) for k in (1, 2)
        ]
        (root / "records").mkdir(parents=True, exist_ok=True)
        (root / "records" / f"{stem}.json").write_text(json.dumps(dict(image=f"{stem}.png", iterations=rows)))
    return root


def test_binomial_p_value_matches_a_direct_sum():
    from math import comb

    for n in (1, 7, 50):
        for k in range(n + 1):
            probs = [comb(n, i) / 2**n for i in range(n + 1)]
            want = min(1.0, sum(p for p in probs if p <= probs[k] + 1e-15))
            assert binomial_two_sided_p(k, n) == pytest.approx(want, rel=1e-12)
    assert binomial_two_sided_p(41, 50) < 1e-5  # the paper's 41 of 50 is far from chance


def test_sheet_is_blinded_and_scoring_uses_the_key(tmp_path, rng):
    res = results_folder(tmp_path / "res", 12, rng)
    key = make_sheet(res, tmp_path / "sheet.html", n=10, seed=3)
    text = (tmp_path / "sheet.html").read_text()
    assert len(key["pairs"]) == 10 and key["sheet_id"] in text
    assert "counterfactual" not in text.lower() and "iteration_" not in text and "case_" not in text  # no names
    sides = [p["counterfactual_side"] for p in key["pairs"]]
    assert "left" in sides and "right" in sides
    assert all(p["iteration"] == 2 for p in key["pairs"])  # the last iteration by default
    # a reader who prefers the counterfactual in 7 of 9 answered pairs
    with open(tmp_path / "a.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sheet_id", "reader", "pair", "choice"])
        for p in key["pairs"]:
            other = "left" if p["counterfactual_side"] == "right" else "right"
            choice = "" if p["pair"] == 10 else (p["counterfactual_side"] if p["pair"] <= 7 else other)
            w.writerow([key["sheet_id"], "dr x", p["pair"], choice])
    r = score_answers(tmp_path / "a.csv", key_path(tmp_path / "sheet.html"))
    assert (r["counterfactual_preferred"], r["answered"], r["unanswered"]) == (7, 9, 1)
    assert r["p_value"] == pytest.approx(binomial_two_sided_p(7, 9)) and r["readers"] == ["dr x"]
    # answers to another sheet are refused
    other = make_sheet(res, tmp_path / "other.html", n=10, seed=3)
    with pytest.raises(ValueError, match="answers to sheet"):
        score_answers(tmp_path / "a.csv", key_path(tmp_path / "other.html"))
    assert other["sheet_id"] != key["sheet_id"]
    # flipped only, a given iteration
    key1 = make_sheet(res, tmp_path / "f.html", iteration=1, flipped_only=True, seed=0)
    assert len(key1["pairs"]) == 6 and all(p["iteration"] == 1 for p in key1["pairs"])


def test_bad_inputs(tmp_path, rng):
    with pytest.raises(ValueError, match="no records"):
        make_sheet(tmp_path, tmp_path / "s.html")
    res = results_folder(tmp_path / "res", 2, rng)
    with pytest.raises(ValueError, match="no iteration 5"):
        make_sheet(res, tmp_path / "s.html", iteration=5)
    (res / "case_1" / "iteration_2.png").unlink()
    with pytest.raises(ValueError, match="has no iteration_2.png"):
        make_sheet(res, tmp_path / "s.html")


def test_unreadable_images_and_records_are_named(tmp_path, rng):
    """A truncated or non-PNG counterfactual is an error naming it (diffice metrics refuses it too), not a broken
    image on the reader's sheet; so is a corrupt record; nothing is written."""
    from PIL import Image

    res = results_folder(tmp_path / "res", 2, rng)
    cf = res / "case_1" / "iteration_2.png"
    good = cf.read_bytes()
    cf.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=rf"^{cf}: cannot read the image"):
        make_sheet(res, tmp_path / "s.html", n=2, seed=0)
    assert not (tmp_path / "s.html").exists() and not key_path(tmp_path / "s.html").exists()
    Image.new("L", (20, 16)).save(cf, format="JPEG")
    with pytest.raises(ValueError, match=rf"^{cf}: expected a PNG image, got JPEG"):
        make_sheet(res, tmp_path / "s.html", n=2, seed=0)
    cf.write_bytes(good)
    make_sheet(res, tmp_path / "s.html", n=2, seed=0)
    rec = res / "records" / "case_0.json"
    for text, says in (
        ("", "not valid JSON \\(the file is empty"),
        ("{", "not valid JSON"),
        ("[]", "not a diffice record"),
    ):
        rec.write_text(text)
        with pytest.raises(ValueError, match=rf"^{rec}: {says}"):
            make_sheet(res, tmp_path / "t.html")
    rec.write_text(json.dumps(dict(image="case_0.png", iterations=[dict(iteration="x")])))
    with pytest.raises(ValueError, match=rf"^{rec}: not a diffice record"):
        make_sheet(res, tmp_path / "t.html")


def test_cli_pairs_names_a_truncated_image(tmp_path, rng, capsys):
    res = results_folder(tmp_path / "res", 2, rng)
    cf = res / "case_0" / "iteration_2.png"
    cf.write_bytes(cf.read_bytes()[:60])
    assert main(["pairs", str(res), "--out", str(tmp_path / "s.html")]) == 2
    assert f"{cf}: cannot read the image" in capsys.readouterr().err


def _browser(download_dir):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium / chromedriver not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(download_dir), "download.prompt_for_download": False}
    )
    return webdriver.Chrome(
        service=Service(shutil.which("chromedriver"), env=env_without_sanitizer_preload()), options=options
    )


def test_reader_clicks_in_a_real_browser_and_downloads_the_csv(tmp_path, rng, capsys):
    res = results_folder(tmp_path / "res", 6, rng)
    assert main(["pairs", str(res), "--out", str(tmp_path / "sheet.html"), "--n", "5", "--seed", "1"]) == 0
    key = json.loads(key_path(tmp_path / "sheet.html").read_text())
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _browser(downloads)
    try:
        from selenium.webdriver.common.by import By

        driver.get((tmp_path / "sheet.html").as_uri())
        driver.find_element(By.ID, "reader").send_keys("Dr Test")
        for p in key["pairs"][:4]:  # prefers the counterfactual in pairs 1-3, the input in 4, skips 5
            side = (
                p["counterfactual_side"]
                if p["pair"] <= 3
                else ("left" if p["counterfactual_side"] == "right" else "right")
            )
            driver.find_element(By.ID, f"p{p['pair']}-left").click()  # a change of mind is allowed
            driver.find_element(By.ID, f"p{p['pair']}-{side}").click()
        assert driver.find_element(By.ID, "count").text == "4"
        chosen = driver.find_elements(By.CSS_SELECTOR, "img.chosen")
        assert len(chosen) == 4
        driver.find_element(By.ID, "download").click()
        target = downloads / f"answers-{key['sheet_id']}.csv"
        for _ in range(100):
            if target.exists() and target.stat().st_size > 0:
                break
            time.sleep(0.1)
        assert target.exists(), f"no download in {list(downloads.iterdir())}"
    finally:
        driver.quit()
    assert main(["pairs", "--score", str(target), "--key", str(key_path(tmp_path / "sheet.html"))]) == 0
    out = capsys.readouterr().out
    assert "counterfactual preferred in 3 of 4 answered pairs (1 unanswered)" in out and "Dr Test" in out
