"""Pick-a-Pic v2 shards (real schema, tiny) -> per-image records and pairs; partitions checked by hand.

The hand-made comparisons (shards 1 and 2; "X>Y" = X preferred):

    shard 1  r0  A>B            shard 2  r0  C>D
             r1  C>A                     r1  B>E
             r2  B~C  (tie)              r2  E>D  (ranking_id of shard 1 r3: the same judgement again)
             r3  E>D                     r3  M>L
             r4  F,G  has_label=False    r4  A~M  (tie)
             r5  H,I  are_different=False
             r6  J~K  (tie)

Kept comparisons: 7 (6 with drop_repeated_rankings=True). Per image (wins, losses): A (1,1) B (1,1)
C (2,0) D (0,3) E (2,1) L (0,1) M (1,0) (D (0,2) and E (1,1) when the repeat is dropped: same labels).
F..K only in dropped rows: no record. "at least once": desirable A B C E M, undesirable D L.
"win only": desirable C M, undesirable A B D E L. Shard 3 adds 12 clean comparisons N{k}>O{k}
(12 desirable + 12 undesirable in both partitions). Shards use row groups of 4 rows.
"""

import io
import json
import re
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kto_lab.cli import main as cli_main
from kto_lab.data import pickapic
from kto_lab.data.converters import pickapic_to_pairs, pickapic_to_records
from kto_lab.data.records import load_pairs, load_records

WIN, LOSE, TIE, NONE = (1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.0, 0.0)


def color(uid):
    h = sum(ord(c) * 37 ** k for k, c in enumerate(uid))
    return (h % 256, (h // 256) % 256, (h // 65536) % 256)


def jpeg(uid):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color(uid)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def row(uid_0, uid_1, labels, ranking_id, has_label=True, are_different=True, caption=None, jpg_1=...):
    caption = caption or f"a picture of {uid_0} and {uid_1}"
    best = uid_0 if labels == WIN else uid_1 if labels == LOSE else None
    return {
        "are_different": are_different, "best_image_uid": best, "caption": caption,
        "created_at": datetime(2023, 5, 1, 12, 0, 0), "has_label": has_label,
        "image_0_uid": uid_0, "image_0_url": f"https://example.invalid/{uid_0}.png",
        "image_1_uid": uid_1, "image_1_url": f"https://example.invalid/{uid_1}.png",
        "jpg_0": jpeg(uid_0), "jpg_1": jpeg(uid_1) if jpg_1 is ... else jpg_1,
        "label_0": labels[0], "label_1": labels[1], "model_0": "sdxl-beta", "model_1": "dreamlike",
        "ranking_id": ranking_id, "user_id": 7, "num_example_per_prompt": 1,
    }


SCHEMA = pa.schema([
    ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
    ("created_at", pa.timestamp("ns")), ("has_label", pa.bool_()), ("image_0_uid", pa.string()),
    ("image_0_url", pa.string()), ("image_1_uid", pa.string()), ("image_1_url", pa.string()),
    ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()), ("label_1", pa.float64()),
    ("model_0", pa.string()), ("model_1", pa.string()), ("ranking_id", pa.int64()), ("user_id", pa.int64()),
    ("num_example_per_prompt", pa.int64()),
])

SHARD_1 = [row("A", "B", WIN, 1), row("A", "C", LOSE, 2), row("B", "C", TIE, 3), row("D", "E", LOSE, 4),
           row("F", "G", NONE, 5, has_label=False), row("H", "I", WIN, 6, are_different=False), row("J", "K", TIE, 7)]
SHARD_2 = [row("C", "D", WIN, 8), row("E", "B", LOSE, 9), row("D", "E", LOSE, 4), row("L", "M", LOSE, 10),
           row("A", "M", TIE, 11)]
SHARD_3 = [row(f"N{k}", f"O{k}", WIN, 100 + k) for k in range(12)]

AT_LEAST_ONCE = {"A": 1, "B": 1, "C": 1, "D": 0, "E": 1, "L": 0, "M": 1}
WIN_ONLY = {"A": 0, "B": 0, "C": 1, "D": 0, "E": 0, "L": 0, "M": 1}
CLEAN = {**{f"N{k}": 1 for k in range(12)}, **{f"O{k}": 0 for k in range(12)}}


def write_shard(path, rows):
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=4)
    return path


@pytest.fixture
def shards(tmp_path):
    d = tmp_path / "pickapic"
    d.mkdir()
    return [write_shard(d / f"train-{i:05d}.parquet", rows) for i, rows in enumerate([SHARD_1, SHARD_2, SHARD_3])]


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("partition, expected", [("at_least_once", AT_LEAST_ONCE), ("win_only", WIN_ONLY)])
def test_partitions_match_hand_counts(tmp_path, shards, partition, expected, drop):
    expected = {**expected, **CLEAN}
    stats = pickapic_to_records(shards, tmp_path / "records.parquet", partition=partition,
                                drop_repeated_rankings=drop, progress=False)
    n_comparisons = 7 + 12 - drop
    n_good = sum(expected.values())
    assert stats == {
        "partition": partition, "out": str(tmp_path / "records.parquet"), "shards": 3,
        "rows": 24, "rows_unlabelled": 1, "rows_same_image": 1, "ties_dropped": 3, "repeated_ranking_ids": 1,
        "comparisons": n_comparisons, "images_in_comparisons": 7 + 24, "duplicate_images_removed": 2 * n_comparisons - 31,
        "images_without_decisive_comparison": 6, "always_won": 2 + 12, "won_and_lost": 3, "always_lost": 2 + 12,
        "missing_images": 0, "unreadable_images": 0, "records": 31, "desirable": n_good, "undesirable": 31 - n_good,
    }
    table = load_records(tmp_path / "records.parquet")
    assert table.counts() == {"desirable": n_good, "undesirable": 31 - n_good}
    assert dict(zip(table.source_ids, table.labels.tolist())) == expected  # one record per uid
    assert len(set(table.source_ids)) == len(table)
    i = table.source_ids.index("C")
    assert table.captions[i] == "a picture of A and C"  # caption of its first kept comparison
    assert table.raw_image(i) == jpeg("C")  # the original JPEG bytes, not re-encoded
    assert table.load_image(i).size == (8, 8)


def test_image_dir_and_csv_output(tmp_path, shards):
    stats = pickapic_to_records(shards[:2], tmp_path / "out" / "records.csv", image_dir=tmp_path / "out" / "images",
                                progress=False)
    assert stats["records"] == 7 and (stats["desirable"], stats["undesirable"]) == (5, 2)
    files = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert files == [f"{u}.jpg" for u in "ABCDELM"]  # each image written once
    text = (tmp_path / "out" / "records.csv").read_text()
    assert "images/C.jpg" in text and str(tmp_path) not in text  # relative to the table
    table = load_records(tmp_path / "out" / "records.csv")
    assert table.load_image(table.source_ids.index("M")).size == (8, 8)
    with pytest.raises(ValueError, match="pass image_dir or write .parquet"):
        pickapic_to_records(shards, tmp_path / "records.jsonl", progress=False)


def test_conversion_streams_shards(tmp_path, shards, monkeypatch):
    """Shards are only read through ``_batches``: pass 1 without image columns, pass 2 a few rows at a time."""
    def never(*a, **k):
        raise AssertionError("a whole shard was read")

    monkeypatch.setattr(pq, "read_table", never)
    monkeypatch.setattr(pq.ParquetFile, "read", never)
    calls, original = [], pickapic._batches

    def spy(shard, columns, batch_rows):
        for batch in original(shard, columns, batch_rows):
            calls.append((tuple(columns), len(next(iter(batch.values())))))
            yield batch

    monkeypatch.setattr(pickapic, "_batches", spy)
    pickapic_to_records(shards, tmp_path / "r.parquet", batch_rows=3, progress=False)
    label_pass = [n for cols, n in calls if "jpg_0" not in cols]
    image_pass = [n for cols, n in calls if "jpg_0" in cols]
    assert label_pass and sum(label_pass) == 24  # every row's labels, no image bytes
    assert image_pass and max(image_pass) <= 3  # images: never more than one batch of rows at a time
    calls.clear()
    pickapic_to_pairs(shards, tmp_path / "p.parquet", batch_rows=3, progress=False)
    assert calls and max(n for _, n in calls) <= 3


def test_pairs(tmp_path, shards):
    stats = pickapic_to_pairs(shards[:2], tmp_path / "pairs.parquet", progress=False)
    assert (stats["pairs"], stats["ties_dropped"], stats["repeated_ranking_ids"], stats["rows"]) == (7, 3, 1, 12)
    pairs = load_pairs(tmp_path / "pairs.parquet")
    assert len(pairs) == 7
    assert pairs.captions[1] == "a picture of A and C"
    assert pairs.raw_image(1, "image_w") == jpeg("C") and pairs.raw_image(1, "image_l") == jpeg("A")
    winner, loser = pairs.load_pair(1)
    assert winner.size == loser.size == (8, 8)
    assert pairs.column("source_id_w") == ["A", "C", "E", "C", "B", "E", "M"]

    stats = pickapic_to_pairs(shards[:2], tmp_path / "p" / "pairs.jsonl", image_dir=tmp_path / "p" / "img",
                              drop_repeated_rankings=True, progress=False)
    assert stats["pairs"] == 6 and len(list((tmp_path / "p" / "img").iterdir())) == 7  # unique uids only
    assert load_pairs(tmp_path / "p" / "pairs.jsonl").load_pair(5) is not None


def test_missing_bytes_and_bad_rows(tmp_path, shards):
    broken = write_shard(tmp_path / "broken.parquet", [row("P", "Q", WIN, 50, jpg_1=None), row("R", "S", WIN, 51)])
    with pytest.raises(ValueError, match=r"broken\.parquet, row 0, column 'jpg_1': image 'Q' has no bytes"):
        pickapic_to_records([broken], tmp_path / "r.parquet", progress=False)
    stats = pickapic_to_records([broken], tmp_path / "r.parquet", on_missing_image="skip", progress=False)
    assert stats["missing_images"] == 1 and (stats["desirable"], stats["undesirable"]) == (2, 1)
    stats = pickapic_to_pairs([broken], tmp_path / "p.parquet", on_missing_image="skip", progress=False)
    assert stats["pairs"] == 1 and stats["pairs_skipped_missing_image"] == 1

    odd = write_shard(tmp_path / "odd.parquet", [row("P", "Q", (1.0, 1.0), 60)])
    with pytest.raises(ValueError, match=r"odd\.parquet, row 0: label_0=1\.0, label_1=1\.0"):
        pickapic_to_records([odd], tmp_path / "r.parquet", progress=False)
    pq.write_table(pa.table({"caption": ["x"], "label_0": [1.0]}), tmp_path / "thin.parquet")
    with pytest.raises(ValueError, match=r"thin\.parquet: missing Pick-a-Pic column\(s\) \['jpg_0'"):
        pickapic_to_records([shards[0], tmp_path / "thin.parquet"], tmp_path / "r.parquet", progress=False)
    with pytest.raises(ValueError, match="partition='sometimes'"):
        pickapic_to_records(shards, tmp_path / "r.parquet", partition="sometimes")
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        pickapic_to_records(str(tmp_path / "none-*.parquet"), tmp_path / "r.parquet")


def test_null_caption_names_shard_and_row(tmp_path):
    bad = row("P", "Q", WIN, 70)
    bad["caption"] = None
    shard = write_shard(tmp_path / "nocap.parquet", [row("R", "S", WIN, 71), bad])
    for convert in (pickapic_to_records, pickapic_to_pairs):
        with pytest.raises(ValueError, match=r"nocap\.parquet, row 1: caption None is not a string"):
            convert([shard], tmp_path / "out.parquet", progress=False)


def test_garbage_image_bytes_are_found_while_converting(tmp_path, capsys):
    """Bytes that are not an image stop the conversion naming shard, row and column, or (skip) are
    left out and counted; the output table then holds only readable images."""
    shard = write_shard(tmp_path / "junk.parquet", [row("P", "Q", WIN, 80, jpg_1=b"<html>not found</html>"),
                                                    row("R", "S", LOSE, 81)])
    out = tmp_path / "r.parquet"
    assert cli_main(["data", "pickapic", "--shards", str(shard), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"^kto-lab data: error: cannot read image 'Q' \(.*junk\.parquet, row 0, column 'jpg_1'\): "
                     r"UnidentifiedImageError: not an image format PIL knows \(set on_missing_image='skip'",
                     err.strip().splitlines()[-1]), err  # the last line: the progress bars come before it
    assert not out.exists()
    assert cli_main(["data", "pickapic", "--shards", str(shard), "--out", str(out), "--on-missing-image", "skip"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["unreadable_images"], stats["missing_images"], stats["records"]) == (1, 1, 3)
    table = load_records(out)
    assert sorted(table.source_ids) == ["P", "R", "S"] and table.check_images() == 0
    stats = pickapic_to_pairs([shard], tmp_path / "p.parquet", on_missing_image="skip", progress=False)
    assert (stats["pairs"], stats["pairs_skipped_missing_image"], stats["unreadable_images"]) == (1, 1, 1)


def test_cli(tmp_path, shards, capsys):
    out = tmp_path / "records.parquet"
    assert cli_main(["data", "pickapic", "--shards", str(shards[0].parent), "--out", str(out),
                     "--partition", "win_only"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["desirable"], stats["undesirable"], stats["shards"]) == (2 + 12, 5 + 12, 3)
    assert cli_main(["data", "stats", str(out), "--check-images"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["kind"], stats["rows"], stats["desirable"], stats["unreadable_images"]) == ("records", 31, 14, 0)
    assert cli_main(["data", "pairs", "--shards", str(shards[1]), "--out", str(tmp_path / "pairs.parquet")]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 4  # alone, shard 2 r2 is no duplicate
    assert cli_main(["data", "stats", str(tmp_path / "pairs.parquet")]) == 0
    assert json.loads(capsys.readouterr().out) == {"tables": [str(tmp_path / "pairs.parquet")], "kind": "pairs", "rows": 4}
    assert cli_main(["data", "pickapic", "--shards", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "kto-lab data: error: shard not found" in capsys.readouterr().err


def test_out_that_is_an_input_is_refused_and_the_input_kept(tmp_path, shards, capsys):
    """issue 21, 4b: ``--out`` equal to an input shard (given as another spelling of its path) replaced
    the shard; ``data threshold``/``label`` with ``--out`` equal to their table did the same."""
    before = shards[1].read_bytes()
    spelled = shards[1].parent / ".." / shards[1].parent.name / shards[1].name
    for command in ("pickapic", "pairs"):
        assert cli_main(["data", command, "--shards", str(shards[0].parent), "--out", str(spelled)]) == 2
        err = capsys.readouterr().err.strip()
        assert re.fullmatch(r"kto-lab data: error: out='.*train-00001\.parquet' is the input shards='.*train-00001"
                            r"\.parquet': it would be replaced .*; choose another out", err), err
        assert shards[1].read_bytes() == before
    table = tmp_path / "scored.csv"
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    table.write_text("image,caption,score\na.png,a cat,7.5\n")
    assert cli_main(["data", "threshold", str(table), "--out", str(table)]) == 2
    assert "is the input table=" in capsys.readouterr().err
    assert cli_main(["data", "label", str(table), "--out", str(table), "--fn", "json:dumps"]) == 2
    assert "is the input table=" in capsys.readouterr().err
    assert table.read_text() == "image,caption,score\na.png,a cat,7.5\n"
