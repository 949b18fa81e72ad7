"""The notebook front (kto_lab.label.widget), driven from Python: its buttons and its keys go through
the same core as the page, and what it shows follows the decision log."""

from pathlib import Path

import pytest

pytest.importorskip("ipywidgets", reason="the widget needs the label extra: pip install 'kto-lab[label]'")

from kto_lab.data.records import load_records  # noqa: E402
from kto_lab.label.widget import label_widget  # noqa: E402
from sd_helpers import write_png  # noqa: E402


def folder(tmp_path, n=4):
    root = tmp_path / "shots"
    for i in range(n):
        write_png(root / f"{i}.png", 50 * i)
        (root / f"{i}.txt").write_text(f"square <{i}>")
    return root


def test_buttons_and_keys_label_undo_and_the_table_follows(tmp_path):
    root = folder(tmp_path)
    widget = label_widget(root, root / "decisions.jsonl", labeler="ana")
    assert widget.shown == 0 and bytes(widget.image.value).startswith(b"\x89PNG")
    assert "square &lt;0&gt;" in widget.caption.value  # captions are escaped
    assert "0 of 4 done" in widget.status.value

    widget.buttons["like"].click()
    assert widget.shown == 1 and "1 of 4 done: 1 liked" in widget.status.value and widget.message.value == "like 0.png"
    widget.key({"type": "keydown", "key": "d"})
    widget.key({"type": "keydown", "key": "ArrowDown"})  # skip
    widget.key({"type": "keydown", "key": "l", "ctrlKey": True})  # a shortcut of the notebook's, not ours
    assert widget.shown == 3 and "3 of 4 done: 1 liked, 1 disliked, 1 skipped" in widget.status.value
    widget.buttons["undo"].click()
    assert widget.shown == 2 and widget.message.value == "undid skip of 2.png"
    widget.key({"type": "keydown", "key": "L"})
    widget.buttons["dislike"].click()
    assert widget.shown is None and "Every image is labelled" in widget.caption.value
    assert widget.buttons["like"].disabled and not widget.buttons["undo"].disabled

    table = load_records(root / "decisions.jsonl")
    assert [Path(table.raw_image(i)).name for i in range(len(table))] == ["0.png", "1.png", "2.png", "3.png"]
    assert table.labels.tolist() == [1, 0, 1, 0]

    again = label_widget(root, root / "decisions.jsonl", labeler="ana")  # a restarted kernel
    assert again.shown is None and "4 of 4 done" in again.status.value
    assert widget.events is not None  # ipyevents (the label extra) delivers the keys in a notebook
