"""Score-threshold and labelling-function converters."""

import json

import numpy as np
import pytest
from PIL import Image

from kto_lab.cli import main as cli_main
from kto_lab.data.converters import label_with_function, threshold_records
from kto_lab.data.records import load_records, write_records
from kto_lab.data.tables import write_table

RED, BLUE, PINK, GREEN = (220, 20, 20), (20, 20, 220), (230, 120, 120), (20, 200, 20)


def redder(image, caption):
    """A synthetic user who likes red: red channel above the mean of all channels (appendix C's redness)."""
    a = np.asarray(image, dtype=np.float64) / 255.0
    return bool(a[..., 0].mean() - a.mean() > 0.1)


@pytest.fixture
def scored(tmp_path):
    """An unlabelled table of 4 images with an 'aesthetic' column (no 'label')."""
    (tmp_path / "img").mkdir()
    rows = []
    for i, (c, s) in enumerate([(RED, 7.0), (BLUE, 6.99), (PINK, 8.5), (GREEN, 2.0)]):
        Image.new("RGB", (8, 8), c).save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "caption": f"c{i}", "aesthetic": s, "source_id": f"u{i}"})
    return write_table(rows, tmp_path / "scored.jsonl")


def test_threshold(tmp_path, scored):
    stats = threshold_records(scored, tmp_path / "out" / "records.parquet", score_column="aesthetic", threshold=7.0)
    assert (stats["desirable"], stats["undesirable"], stats["records"]) == (2, 2, 4)
    table = load_records(tmp_path / "out" / "records.parquet")
    assert table.labels.tolist() == [1, 0, 1, 0]  # >= 7 is desirable, 6.99 is not
    np.testing.assert_allclose(table.scores, [7.0, 6.99, 8.5, 2.0])
    assert table.source_ids == ["u0", "u1", "u2", "u3"]
    assert table.load_image(2).getpixel((0, 0)) == PINK  # paths re-rooted for the new table's directory
    # a RecordTable (score column "score") can be re-thresholded too
    stats = threshold_records(table, tmp_path / "strict.csv", threshold=8.0)
    assert load_records(tmp_path / "strict.csv").labels.tolist() == [0, 0, 1, 0]


def test_threshold_bad_input(tmp_path, scored):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['score'\]"):
        threshold_records(scored, tmp_path / "r.csv")
    rows = [{"image": "a.png", "caption": "x", "aesthetic": 5.0}, {"image": "b.png", "caption": "y", "aesthetic": None}]
    write_table(rows, tmp_path / "holes.jsonl")
    with pytest.raises(ValueError, match=r"holes\.jsonl, row 1, column 'aesthetic': score None"):
        threshold_records(tmp_path / "holes.jsonl", tmp_path / "r.csv", score_column="aesthetic")
    assert not (tmp_path / "r.csv").exists()
    with pytest.raises(ValueError, match="threshold=nan"):
        threshold_records(scored, tmp_path / "r.csv", score_column="aesthetic", threshold=float("nan"))


def test_label_with_function(tmp_path, scored):
    stats = label_with_function(scored, tmp_path / "red.parquet", redder, progress=False)
    assert (stats["desirable"], stats["undesirable"], stats["images_skipped"]) == (2, 2, 0)
    table = load_records(tmp_path / "red.parquet")
    assert table.labels.tolist() == [1, 0, 1, 0] and table.captions == ["c0", "c1", "c2", "c3"]

    (scored.parent / "img" / "1.png").unlink()
    with pytest.raises(OSError, match=r"1\.png"):
        label_with_function(scored, tmp_path / "red.parquet", redder, progress=False)
    stats = label_with_function(scored, tmp_path / "red.parquet", redder, on_missing_image="skip", progress=False)
    assert (stats["records"], stats["images_skipped"], stats["desirable"]) == (3, 1, 2)
    with pytest.raises(TypeError, match=r"returned 0\.3.*must return a bool"):
        label_with_function(scored, tmp_path / "x.parquet", lambda im, c: 0.3, on_missing_image="skip", progress=False)


def test_label_cli(tmp_path, scored, capsys, monkeypatch):
    (tmp_path / "my_user.py").write_text(
        "def likes_even_captions(image, caption):\n    return int(caption[-1]) % 2 == 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "labelled.csv"
    assert cli_main(["data", "label", str(scored), "--out", str(out), "--fn", "my_user:likes_even_captions"]) == 0
    assert json.loads(capsys.readouterr().out)["desirable"] == 2
    assert load_records(out).labels.tolist() == [1, 0, 1, 0]
    assert cli_main(["data", "threshold", str(scored), "--out", str(tmp_path / "t.parquet"),
                     "--score-column", "aesthetic", "--threshold", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["desirable"] == 1
    write_records([{"image": "img/0.png", "caption": "x", "label": 1}], tmp_path / "only_good.csv")
    assert cli_main(["data", "stats", str(tmp_path / "only_good.csv")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["undesirable"] == 0 and "one class is empty" in captured.err


def test_label_fn_is_found_in_the_current_directory(tmp_path, scored, monkeypatch, capsys):
    """``--fn my_user:likes_red`` (docs/data.md) finds my_user.py where the command runs, with the
    installed ``kto-lab`` script too (whose sys.path does not hold the current directory)."""
    import sys

    (tmp_path / "cwd_user.py").write_text("def likes(image, caption):\n    return caption.endswith('0')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert cli_main(["data", "label", str(scored), "--out", str(tmp_path / "o.parquet"), "--fn", "cwd_user:likes"]) == 0
    assert json.loads(capsys.readouterr().out)["desirable"] == 1
