"""kto-lab data from-folder: a folder of images (+ captions from a sidecar or .txt files, + likes from
liked/ and disliked/ or the sidecar) -> a records table and a labeling queue; bad input is one line."""

import json
from pathlib import Path

import pytest

from kto_lab.cli import main
from kto_lab.data.folder import folder_to_records, scan_folder
from kto_lab.data.records import load_records, open_image_table
from kto_lab.data.tables import DataError
from sd_helpers import write_png


@pytest.fixture
def shots(tmp_path):
    """liked/a.png (a .txt caption), disliked/b.png, c.png and d.jpg unlabelled, one broken file, a hidden one."""
    root = tmp_path / "shots"
    write_png(root / "liked" / "a.png", 200)
    (root / "liked" / "a.txt").write_text("a bright square\n")
    write_png(root / "disliked" / "b.png", 10)
    write_png(root / "c.png")
    write_png(root / "sub" / "d.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG but not really")
    write_png(root / ".thumbs" / "x.png")
    return root


def test_subfolders_and_caption_files_give_records_and_the_rest_a_queue(shots, tmp_path):
    stats = folder_to_records(shots, tmp_path / "records.csv", queue=tmp_path / "queue.csv", default_caption="a square")
    records = load_records(tmp_path / "records.csv")
    assert records.captions == ["a square", "a bright square"] and records.labels.tolist() == [0, 1]  # path order
    assert Path(records.raw_image(1)) == (shots / "liked" / "a.png").resolve()
    queue = open_image_table(tmp_path / "queue.csv")
    assert [Path(queue.raw_image(i)).name for i in range(len(queue))] == ["c.png", "d.jpg"]
    assert stats["desirable"] == 1 and stats["undesirable"] == 1 and stats["unlabeled"] == 2
    assert stats["captions from caption file"] == 1 and stats["captions from default"] == 3
    assert [u["image"] for u in stats["unreadable"]] == ["broken.png"]  # skipped, named; .thumbs/ is hidden


def test_a_metadata_sidecar_gives_captions_and_labels_and_must_agree_with_the_folders(shots, tmp_path):
    (shots / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"file_name": "c.png", "text": "a grey square", "label": "like"},
        {"file_name": "sub/d.jpg", "text": "a grey photo", "label": ""},
        {"file_name": "liked/a.png", "text": "from the sidecar", "label": 1},
    ]) + "\n")
    scan = scan_folder(shots)
    by_name = {im.name: im for im in scan.images}
    assert by_name["c.png"].label == 1 and by_name["c.png"].caption == "a grey square"
    assert by_name["sub/d.jpg"].label is None
    assert by_name["liked/a.png"].caption == "from the sidecar"  # the sidecar beats the .txt file
    (shots / "metadata.jsonl").write_text(json.dumps({"file_name": "liked/a.png", "text": "", "label": 0}) + "\n")
    with pytest.raises(DataError, match=r"metadata.jsonl, row 0: label 0 for 'liked/a.png' contradicts its folder"):
        scan_folder(shots)
    (shots / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": ""}) + "\n")
    with pytest.raises(DataError, match=r"row 0: image 'gone.png' is not a file under"):
        scan_folder(shots)


def test_unlabelled_images_without_a_queue_and_an_empty_folder_are_one_line(shots, tmp_path, capsys):
    assert main(["data", "from-folder", str(shots), "--out", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "2 image(s)" in err and "no like or dislike (first: 'c.png')" in err
    assert "--queue" in err and not (tmp_path / "r.csv").exists()  # nothing written
    (tmp_path / "empty").mkdir()
    assert main(["data", "from-folder", str(tmp_path / "empty"), "--queue", str(tmp_path / "q.csv")]) == 2
    assert "no images (png, jpg" in capsys.readouterr().err
    assert main(["data", "from-folder", str(tmp_path / "missing"), "--out", str(tmp_path / "r.csv")]) == 2
    assert "is not a folder of images" in capsys.readouterr().err


def test_cli_writes_both_tables_and_names_the_unreadable_image(shots, tmp_path, capsys):
    assert main(["data", "from-folder", str(shots), "--out", str(tmp_path / "r.jsonl"), "--queue", str(tmp_path / "q.csv")]) == 0
    out, err = capsys.readouterr()
    stats = json.loads(out)
    assert stats["out"].endswith("r.jsonl") and stats["queue"].endswith("q.csv")
    assert "warning: skipped unreadable image broken.png: cannot read image" in err
    assert len(load_records(tmp_path / "r.jsonl")) == 2
