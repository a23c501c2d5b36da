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


def _write_answers(path, rows, header=("sheet_id", "reader", "pair", "choice")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_a_reader_s_last_answer_counts_and_readers_are_counted_apart(tmp_path, rng):
    """Two rows for one pair by one reader (left, then right) once counted as 2 answered pairs, and with several
    readers "unanswered" was pairs minus every reader's answers together."""
    res = results_folder(tmp_path / "res", 4, rng)
    key = make_sheet(res, tmp_path / "sheet.html", n=4, seed=3)
    sid, cf = key["sheet_id"], {p["pair"]: p["counterfactual_side"] for p in key["pairs"]}
    other = {k: "left" if v == "right" else "right" for k, v in cf.items()}
    rows = [[sid, "a", k, other[k]] for k in (1, 2, 3, 4)]  # a first prefers the input everywhere
    rows += [[sid, "a", 1, cf[1]], [sid, "a", 2, ""]]  # then changes pair 1; an empty row changes nothing
    rows += [[sid, "b", 1, cf[1]], [sid, "b", 2, ""]]  # b answers pair 1 only
    _write_answers(tmp_path / "a.csv", rows)
    r = score_answers(tmp_path / "a.csv", key_path(tmp_path / "sheet.html"))
    assert (r["counterfactual_preferred"], r["answered"], r["unanswered"]) == (2, 5, 3)
    assert r["readers"] == ["a", "b"] and r["p_value"] == pytest.approx(binomial_two_sided_p(2, 5))


def test_a_file_that_is_not_a_key_and_a_bad_pair_are_named(tmp_path, rng, capsys):
    """--key ans.csv once said only "Expecting value: line 1 column 1 (char 0)"; a pair "x" "invalid literal for
    int()"."""
    res = results_folder(tmp_path / "res", 2, rng)
    key = make_sheet(res, tmp_path / "sheet.html", n=2, seed=0)
    answers = tmp_path / "ans.csv"
    _write_answers(answers, [[key["sheet_id"], "a", 1, "left"], [key["sheet_id"], "a", "x", "left"]])
    with pytest.raises(ValueError, match=rf"^{answers}: not valid JSON .*; not a key file"):
        score_answers(answers, answers)
    assert main(["pairs", "--score", str(answers), "--key", str(answers)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"diffice pairs: error: {answers}: not valid JSON") and "not a key file" in err
    assert len(err.splitlines()) == 1
    (tmp_path / "other.json").write_text(json.dumps(dict(pairs=[1, 2])))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'other.json'}: not a key file"):
        score_answers(answers, tmp_path / "other.json")
    with pytest.raises(ValueError, match=rf"^{answers}: row 3, column pair: expected a pair number, got 'x'"):
        score_answers(answers, key_path(tmp_path / "sheet.html"))
    answers.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=rf"^{answers}: not a CSV of answers \(not UTF-8"):
        score_answers(answers, key_path(tmp_path / "sheet.html"))


def test_an_existing_sheet_or_key_is_not_overwritten(tmp_path, rng, capsys):
    """Running pairs --out sheet.html again once replaced sheet.key.json silently: answers to the first sheet had no
    key left."""
    res = results_folder(tmp_path / "res", 2, rng)
    sheet = tmp_path / "sheet.html"
    assert main(["pairs", str(res), "--out", str(sheet), "--n", "2"]) == 0
    capsys.readouterr()
    before = sheet.read_bytes(), key_path(sheet).read_bytes()
    assert main(["pairs", str(res), "--out", str(sheet), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("diffice pairs: error: ")
    assert f"{sheet} and {key_path(sheet)} already exist" in err and "use another --out or delete them" in err
    assert (sheet.read_bytes(), key_path(sheet).read_bytes()) == before
    sheet.unlink()  # the key alone is refused too
    with pytest.raises(FileExistsError, match=rf"^{key_path(sheet)} already exists"):
        make_sheet(res, sheet, n=2)
    assert not sheet.exists() and key_path(sheet).read_bytes() == before[1]


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


def test_unnamed_readers_are_not_merged_into_one(tmp_path, rng):
    """Two readers who left the name empty once merged into one "(unnamed)" reader, the second's answers replacing
    the first's: 0 of 4 answered instead of 4 of 8, silently. One unnamed download still scores."""
    res = results_folder(tmp_path / "res", 4, rng)
    key = make_sheet(res, tmp_path / "sheet.html", n=4, seed=3)
    sid, cf = key["sheet_id"], {p["pair"]: p["counterfactual_side"] for p in key["pairs"]}
    other = {k: "left" if v == "right" else "right" for k, v in cf.items()}
    one = [[sid, "", k, cf[k]] for k in (1, 2, 3, 4)]
    _write_answers(tmp_path / "one.csv", one)
    r = score_answers(tmp_path / "one.csv", key_path(tmp_path / "sheet.html"))
    assert (r["counterfactual_preferred"], r["answered"], r["unanswered"], r["readers"]) == (4, 4, 0, [""])
    _write_answers(tmp_path / "two.csv", one + [[sid, " ", k, other[k]] for k in (1, 2, 3, 4)])
    with pytest.raises(ValueError, match=r"two\.csv: rows 2 and 6 both answer pair 1 without a reader name"):
        score_answers(tmp_path / "two.csv", key_path(tmp_path / "sheet.html"))


def test_downloads_put_together_with_cat_and_a_spreadsheet_s_csv_score(tmp_path, rng):
    """`cat a.csv b.csv` repeats the header line, which was read as answers to a sheet called 'sheet_id'; a CSV
    saved by a spreadsheet starts with a byte order mark, which made its header lack 'sheet_id'; a file with no
    answer row at all scored as 0 of 0 answered."""
    res = results_folder(tmp_path / "res", 4, rng)
    key = make_sheet(res, tmp_path / "sheet.html", n=4, seed=3)
    sid, cf = key["sheet_id"], {p["pair"]: p["counterfactual_side"] for p in key["pairs"]}
    _write_answers(tmp_path / "a.csv", [[sid, "a", k, cf[k]] for k in (1, 2, 3, 4)])
    _write_answers(tmp_path / "b.csv", [[sid, "b", 1, cf[1]]])
    (tmp_path / "ab.csv").write_bytes((tmp_path / "a.csv").read_bytes() + (tmp_path / "b.csv").read_bytes())
    r = score_answers(tmp_path / "ab.csv", key_path(tmp_path / "sheet.html"))
    assert (r["counterfactual_preferred"], r["answered"], r["unanswered"], r["readers"]) == (5, 5, 3, ["a", "b"])
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "a.csv").read_bytes())
    assert score_answers(tmp_path / "bom.csv", key_path(tmp_path / "sheet.html"))["answered"] == 4
    _write_answers(tmp_path / "none.csv", [])
    with pytest.raises(ValueError, match=r"none\.csv: no answers in it"):
        score_answers(tmp_path / "none.csv", key_path(tmp_path / "sheet.html"))


SHEET_HARNESS = r"""
// runs the sheet's script on a stub DOM: argv sheet.html, reader name, clicks "1:left,2:right", out.csv
const fs = require("fs");
const [html, reader, clicks, out] = process.argv.slice(2);
const src = fs.readFileSync(html, "utf8");
const els = {}, on = {};
const el = (id) => els[id] || (els[id] = {value: "", textContent: "", dataset: {}, classList: {toggle() {}},
  focus() {}, addEventListener(t, f) { on[id] = f; }});
const imgs = [];
for (const m of src.matchAll(/<img class="choice" id="(p\d+-(?:left|right))" data-pair="(\d+)" data-side="(\w+)"/g)) {
  el(m[1]).dataset = {pair: m[2], side: m[3]}; imgs.push(el(m[1]));
}
el("reader").value = reader;
let text = null, alerted = null;
global.alert = (m) => { alerted = m; };
global.Blob = class { constructor(parts) { text = parts.join(""); } };
global.URL = {createObjectURL: () => "blob:"};
global.document = {getElementById: el, querySelectorAll: () => imgs, body: {appendChild() {}},
  createElement: () => ({click() {}, remove() {}})};
eval(src.split("<script>")[1].split("</script>")[0]);
for (const c of clicks.split(",").filter(Boolean)) { const [k, s] = c.split(":"); on["p" + k + "-" + s](); }
on["download"]();
if (text !== null) fs.writeFileSync(out, text);
console.log(JSON.stringify({downloaded: text !== null, alerted}));
"""


def test_the_sheet_asks_for_the_reader_s_name_before_the_download(tmp_path, rng):
    """The sheet's own script (run under node on a stub DOM; the headless-browser test above needs chromium): with
    no reader name it downloaded a CSV whose rows could not be told from another unnamed reader's; now it asks for
    the name, and the downloaded CSV (name trimmed) scores."""
    import subprocess

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed")
    res = results_folder(tmp_path / "res", 3, rng)
    key = make_sheet(res, tmp_path / "sheet.html", n=3, seed=5)
    (tmp_path / "harness.js").write_text(SHEET_HARNESS)

    def reader(name, clicks):
        out = subprocess.run(
            [node, str(tmp_path / "harness.js"), str(tmp_path / "sheet.html"), name, clicks, str(tmp_path / "a.csv")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(out.stdout)

    asked = "Please enter your name (Reader) before downloading the answers."
    assert reader("  ", "1:left") == dict(downloaded=False, alerted=asked)
    got = reader(' Dr "A", B ', "1:left,2:left,3:right")
    assert got["downloaded"] and (tmp_path / "a.csv").read_text().splitlines()[1].split(",")[1] == "Dr  A   B"
    cf = {p["pair"]: p["counterfactual_side"] for p in key["pairs"]}
    r = score_answers(tmp_path / "a.csv", key_path(tmp_path / "sheet.html"))
    want = sum(cf[k] == s for k, s in ((1, "left"), (2, "left"), (3, "right")))
    assert (r["counterfactual_preferred"], r["answered"], r["readers"]) == (want, 3, ["Dr  A   B"])
