"""Record and pair tables: CSV / JSONL / Parquet round trips, lazy images, bad input."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kto_lab.data.records import (
    DataError, ImageLoadError, PairTable, RecordTable, load_pairs, load_records, parse_label, write_pairs, write_records,
)
from kto_lab.data.sampler import GammaSampler
from kto_lab.data.tables import ParquetBytesColumn

COLORS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (250, 250, 0), (30, 30, 30)]


def png(path, color, size=8):
    Image.new("RGB", (size, size), color).save(path)
    return path


def png_bytes(color, size=8):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def pixel(image):
    return image.getpixel((0, 0))


@pytest.fixture
def image_rows(tmp_path):
    """Five records whose images are PNG files in tmp_path/images, labels spelled every allowed way."""
    (tmp_path / "images").mkdir()
    labels = [1, "0", "desirable", "Undesirable", True]
    scores = [7.5, 3.0, float("nan"), 6.9, 8.0]
    return [
        {"image": str(png(tmp_path / "images" / f"{i}.png", c)), "caption": f"caption {i}", "label": labels[i],
         "score": scores[i], "source_id": f"id{i}"}
        for i, c in enumerate(COLORS)
    ]


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_round_trip(tmp_path, image_rows, suffix):
    path = write_records(image_rows, tmp_path / f"records.{suffix}")
    table = load_records(path)
    assert isinstance(table, RecordTable) and len(table) == 5
    assert table.captions == [f"caption {i}" for i in range(5)]
    assert table.labels.dtype == np.int64 and table.labels.tolist() == [1, 0, 1, 0, 1]
    np.testing.assert_array_equal(table.scores, [7.5, 3.0, np.nan, 6.9, 8.0])
    assert table.source_ids == [f"id{i}" for i in range(5)]
    assert table.counts() == {"desirable": 3, "undesirable": 2}
    assert "NaN" not in path.read_text(errors="ignore") or suffix == "parquet"  # a missing score is null, not NaN
    for i, color in enumerate(COLORS):
        image = table.load_image(i)
        assert image.mode == "RGB" and pixel(image) == color
    # paths under the table's directory are stored relative to it: the folder can move
    moved = tmp_path.rename(tmp_path.with_name(tmp_path.name + "_moved"))
    assert pixel(load_records(moved / f"records.{suffix}").load_image(3)) == COLORS[3]


def test_optional_columns_and_several_tables(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    png(a / "x.png", COLORS[0]), png(b / "x.png", COLORS[1])  # same relative path, different tables
    write_records([{"image": "x.png", "caption": "", "label": 0}], a / "t.csv")
    write_records([{"image": "x.png", "caption": "c", "label": 1, "score": 2.0}], b / "t.jsonl")
    table = load_records([a / "t.csv", b / "t.jsonl"])
    assert table.captions == ["", "c"] and table.labels.tolist() == [0, 1]
    assert np.isnan(table.scores[0]) and table.scores[1] == 2.0  # a file without the column gives NaN
    assert table.source_ids is None
    assert [pixel(table.load_image(i)) for i in range(2)] == [COLORS[0], COLORS[1]]


def test_parquet_bytes_are_read_one_row_group_at_a_time(tmp_path):
    rows = [{"image": png_bytes(COLORS[i % 5]), "caption": str(i), "label": i % 2} for i in range(10)]
    path = write_records(rows, tmp_path / "bytes.parquet", row_group_size=4)
    table = load_records(path)
    column = table.files[0].images["image"]
    assert isinstance(column, ParquetBytesColumn) and column._file is None  # nothing read yet
    assert pixel(table.load_image(9)) == COLORS[4]
    group, cached = column._cached
    assert group == 2 and len(cached) == 2  # only the last row group (rows 8, 9) is in memory
    assert pixel(table.load_image(5)) == COLORS[0] and column._cached[0] == 1
    clone = pickle.loads(pickle.dumps(table))  # e.g. sent to a DataLoader worker: no open handle travels
    assert clone.files[0].images["image"]._cached is None
    assert pixel(clone.load_image(2)) == COLORS[2]
    assert table.raw_image(3) == rows[3]["image"]


def test_missing_and_corrupt_images(tmp_path, image_rows):
    (tmp_path / "images" / "1.png").unlink()
    (tmp_path / "images" / "3.png").write_bytes(b"not an image")
    path = write_records(image_rows, tmp_path / "records.csv")

    table = load_records(path)  # on_missing_image="error"
    with pytest.raises(ImageLoadError, match=r"1\.png.*records\.csv, row 1, column 'image'") as info:
        table.load_image(1)
    assert isinstance(info.value, OSError)
    with pytest.raises(ImageLoadError, match=r"3\.png"):
        table.load_image(3)
    with pytest.raises(ImageLoadError):
        table.check_images()

    table = load_records(path, on_missing_image="skip")
    assert table.load_image(1) is None and table.is_skipped(1)
    assert table.load_image(1) is None  # asked again: still None, counted once
    assert [s[0] for s in table.skipped] == [1] and table.skipped[0][1].endswith("1.png")
    assert table.check_images() == 2
    assert sorted(s[0] for s in table.skipped) == [1, 3]
    assert pixel(table.load_image(4)) == COLORS[4]

    write_records([{"image": b"\x00" * 10, "caption": "x", "label": 1}], tmp_path / "bad.parquet")
    with pytest.raises(ImageLoadError, match=r"bad\.parquet, row 0, column 'image'"):
        load_records(tmp_path / "bad.parquet").load_image(0)


def test_check_files_finds_missing_files_without_reading_images(tmp_path, image_rows, monkeypatch):
    (tmp_path / "images" / "1.png").unlink()
    (tmp_path / "images" / "4.png").unlink()
    (tmp_path / "images" / "3.png").write_bytes(b"not an image")  # exists: found only when read
    path = write_records(image_rows, tmp_path / "records.csv")
    import kto_lab.data.tables as tables

    monkeypatch.setattr(tables, "decode_image", lambda *a, **k: pytest.fail("an image was read"))
    with pytest.raises(ImageLoadError, match=r"image file not found: '.*1\.png' \(table .*records\.csv, row 1, "
                                             r"column 'image'\); 1 more image file\(s\) are missing"):
        load_records(path).check_files()
    table = load_records(path, on_missing_image="skip")
    assert table.check_files() == 2 and [i for i, _, _ in table.skipped] == [1, 4]
    assert table.skipped[0][2] == "file not found" and table.check_files() == 2  # counted once


def test_bad_values_name_file_row_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image,caption,label\na.png,x,1\nb.png,y,desirable\nc.png,z,maybe\n")
    with pytest.raises(ValueError, match=r"t\.csv, row 2, column 'label': label 'maybe'"):
        load_records(path)
    path.write_text("image,caption,label,score\na.png,x,1,high\n")
    with pytest.raises(ValueError, match=r"t\.csv, row 0, column 'score': score 'high'"):
        load_records(path)
    path.write_text("image,caption\na.png,x\n")
    with pytest.raises(ValueError, match=r"t\.csv: missing column\(s\) \['label'\]"):
        load_records(path)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"image": "a.png", "caption": 3, "label": 1}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl, row 0, column 'caption'"):
        load_records(jsonl)
    jsonl.write_text('{"image": "a.png", "caption": "x", "label": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"t\.jsonl, line 2: not valid JSON"):
        load_records(jsonl)
    with pytest.raises(ValueError, match=r"unknown table format '\.txt'"):
        load_records(tmp_path / "t.txt")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_records(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="on_missing_image='ignore'"):
        load_records(path, on_missing_image="ignore")
    with pytest.raises(ValueError, match=r"record 1: label 2"):
        write_records([{"image": "a.png", "caption": "x", "label": 1}, {"image": "a.png", "caption": "x", "label": 2}],
                      tmp_path / "w.csv")
    assert not (tmp_path / "w.csv").exists() and not (tmp_path / "w.csv.partial").exists()  # no half-written table
    with pytest.raises(ValueError, match="only a .parquet table"):
        write_records([{"image": b"\xff\xd8", "caption": "x", "label": 1}], tmp_path / "w.jsonl")


def test_parse_label():
    assert [parse_label(v) for v in (1, 0, 1.0, True, False, "true", " FALSE ", "desirable", np.int64(1))] == [1, 0, 1, 1, 0, 1, 0, 1, 1]
    for bad in (2, -1, 0.5, "yes", None, ""):
        with pytest.raises(ValueError):
            parse_label(bad)


def test_one_class_empty_is_an_error_for_gamma_sampling(tmp_path, image_rows):
    rows = [dict(r, label=1) for r in image_rows]
    table = load_records(write_records(rows, tmp_path / "all_good.parquet"))
    assert table.counts() == {"desirable": 5, "undesirable": 0}
    with pytest.raises(ValueError, match="no undesirable record"):
        GammaSampler(table.labels, gamma=0.8)
    GammaSampler(table.labels, gamma=1.0)  # SFT-style: desirable only is fine


def test_pairs_round_trip(tmp_path):
    (tmp_path / "w.png").write_bytes(png_bytes(COLORS[0]))
    rows = [
        {"caption": "p0", "image_w": str(tmp_path / "w.png"), "image_l": str(png(tmp_path / "l.png", COLORS[1]))},
        {"caption": "p1", "image_w": str(tmp_path / "l.png"), "image_l": str(tmp_path / "gone.png")},
    ]
    for suffix in ("csv", "parquet"):
        pairs = load_pairs(write_pairs(rows, tmp_path / f"pairs.{suffix}"), on_missing_image="skip")
        assert isinstance(pairs, PairTable) and len(pairs) == 2 and pairs.captions == ["p0", "p1"]
        winner, loser = pairs.load_pair(0)
        assert (pixel(winner), pixel(loser)) == (COLORS[0], COLORS[1])
        assert pairs.load_pair(1) is None and pairs.skipped[0][1].endswith("gone.png")
    with pytest.raises(ImageLoadError, match="gone.png"):
        load_pairs(tmp_path / "pairs.csv").load_pair(1)
    with pytest.raises(ValueError, match=r"pair 0: missing \['image_l'\]"):
        write_pairs([{"caption": "x", "image_w": "a.png"}], tmp_path / "p.csv")


def test_gamma_sampler_resumes_its_sequence_and_refuses_another_gamma():
    from kto_lab.config import ConfigError

    labels = [1, 1, 0, 1, 0, 0, 1]
    a = GammaSampler(labels, gamma=0.8, seed=3)
    a.sample(5)
    state = a.state_dict()
    expected = a.sample(6)
    b = GammaSampler(labels, gamma=0.8, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.sample(6), expected)
    with pytest.raises(ConfigError, match=r"gamma=0.5 differs from the resumed checkpoint's gamma=0.8"):
        GammaSampler(labels, gamma=0.5).load_state_dict(state)


def test_an_extreme_image_is_refused_from_its_header_before_it_is_decoded(tmp_path, monkeypatch):
    """A 1 x 20,000 px PNG (a few hundred bytes) would take gigabytes once resized to a training resolution."""
    import PIL.ImageFile

    from kto_lab.data.records import load_records
    from kto_lab.data.tables import ImageLoadError, decode_image

    Image.new("RGB", (1, 20_000), (255, 0, 0)).save(tmp_path / "strip.png")
    Image.new("RGB", (64, 48), (0, 0, 255)).save(tmp_path / "ok.png")
    (tmp_path / "r.csv").write_text("image,caption,label\nstrip.png,a,1\nok.png,b,0\n")
    assert (tmp_path / "strip.png").stat().st_size < 1000
    table = load_records(tmp_path / "r.csv")
    real_load = PIL.ImageFile.ImageFile.load
    with monkeypatch.context() as m:
        m.setattr(PIL.ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
        with pytest.raises(ImageLoadError, match=r"image '.*strip\.png' \(table .*r\.csv, row 0, column 'image'\) is "
                                                 r"refused: it is 1 x 20000 pixels, an aspect ratio beyond 10:1"):
            table.load_image(0)
        with pytest.raises(ImageLoadError, match="aspect ratio beyond 10:1"):
            decode_image(tmp_path / "strip.png", "strip.png", header_only=True)  # converters' header check
    assert table.load_image(1).size == (64, 48) and PIL.ImageFile.ImageFile.load is real_load
    skip = load_records(tmp_path / "r.csv", on_missing_image="skip")
    assert skip.load_image(0) is None and skip.skipped[0][0] == 0  # under skip: counted, like an unreadable image


def test_a_parquet_pair_of_one_image_given_by_bytes_is_refused_in_one_line(tmp_path):
    """Issue 21, 7a: a DPO pair whose winner and loser are the same bytes (Diffusion-DPO's loss stays at ln 2)."""
    import pyarrow.parquet as pq

    red, blue = png_bytes(COLORS[0]), png_bytes(COLORS[1])
    rows = [{"caption": "p0", "image_w": red, "image_l": blue}, {"caption": "p1", "image_w": blue, "image_l": red},
            {"caption": "p2", "image_w": blue, "image_l": None},  # a null cell is no match (it is unreadable)
            {"caption": "p3", "image_w": red, "image_l": bytes(red)}]
    path = tmp_path / "pairs.parquet"  # written by pandas, as a user's own table would be
    pd.DataFrame(rows).to_parquet(path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 2 and pq.read_table(path).column("image_w").type == "binary"
    pairs = load_pairs(path)
    with pytest.raises(DataError) as err:
        pairs.check_distinct()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}, row 3: image_w and image_l are the same image "
                                                      "(equal bytes)")
    pd.DataFrame(rows[:3]).to_parquet(tmp_path / "fine.parquet", row_group_size=2)
    load_pairs(tmp_path / "fine.parquet").check_distinct()  # two images a pair: accepted
