"""The labeling core (kto_lab.label): queues from a folder, a table or a round's images; a session's
next / decide / undo / progress / wait; restart shows only what has no decision; an unreadable image
is skipped with its name; kto-lab train reads a labelled queue's decision log unchanged."""

import threading
from pathlib import Path

import pytest

from kto_lab.cli import main
from kto_lab.data.decisions import AlreadyDecided
from kto_lab.data.tables import DataError
from kto_lab.label import LabelSession, Queue
from sd_helpers import write_png, write_records

TINY_KTO = Path(__file__).resolve().parents[1] / "kto_lab" / "configs" / "tiny_kto.yaml"


def truncated_png(path: Path) -> Path:
    """A PNG whose header reads but whose pixels do not: found only when decoded."""
    data = write_png(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_progress_restart_and_undo_over_a_folder(tmp_path):
    for i in range(5):
        write_png(tmp_path / "shots" / f"{i}.png", 40 * i)
    write_png(tmp_path / "shots" / "liked" / "old.png")  # labelled by its folder: not queued
    log = tmp_path / "shots" / "decisions.jsonl"
    queue = Queue.from_folder(tmp_path / "shots")
    assert len(queue) == 5 and queue.already_labeled == 1
    session = LabelSession(queue, log, labeler="ana")
    for action in ("like", "like", "dislike"):
        session.decide(session.next(), action)
    assert str(session.progress()) == "3 of 5 done: 2 liked, 1 disliked, 0 skipped"
    assert session.remaining == 2 and not session.complete

    again = LabelSession(Queue.from_folder(tmp_path / "shots"), log, labeler="ana")  # a restart
    assert again.pending() == [3, 4] and again.next() == 3
    assert again.undo().decision == "dislike" and again.pending() == [2, 3, 4]
    again.decide(2, "skip")
    again.decide(3, "like")
    again.decide(4, "dislike")
    assert again.complete and str(again.progress()) == "5 of 5 done: 3 liked, 1 disliked, 1 skipped"
    assert [Path(r["image"]).name for r in again.records()] == ["0.png", "1.png", "3.png", "4.png"]


def test_queue_from_items_keeps_extra_keys_and_refuses_duplicates(tmp_path):
    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png")
    queue = Queue([{"image": a, "caption": "a cat", "seed": 3, "prompt_id": "p1"}, (b, "a dog")])
    session = LabelSession(queue, tmp_path / "d.jsonl", labeler="round-1")
    session.decide(0, "like")
    session.decide(1, "dislike")
    assert session.records()[0] == {"image": str(a.resolve()), "caption": "a cat", "label": 1, "seed": 3, "prompt_id": "p1"}
    with pytest.raises(DataError, match="is in the queue twice"):
        Queue([a, str(a)])
    with pytest.raises(DataError, match=r"keys \['label'\] are the decision log's own"):
        Queue([{"image": a, "label": 1}])


def test_two_sessions_on_one_log_see_each_other_and_a_stale_tab_labels_nothing(tmp_path):
    paths = [write_png(tmp_path / f"{i}.png") for i in range(3)]
    ana, bo = (LabelSession(Queue(paths), tmp_path / "d.jsonl", labeler=n) for n in ("ana", "bo"))
    shown_to_bo = bo.next()
    ana.decide(ana.next(), "like")  # ana labels the image bo is looking at
    assert bo.act("dislike", shown_to_bo) == "0.png was already labelled like by ana; showing the next"
    assert bo.next() == 1
    with pytest.raises(AlreadyDecided):
        bo.decide(0, "dislike")
    assert bo.act("undo") == "nothing to undo"  # bo undoes only bo's own


def test_an_unreadable_image_is_skipped_with_its_name_and_counts_as_done(tmp_path):
    good = write_png(tmp_path / "good.png")
    bad = truncated_png(tmp_path / "bad.png")  # its header reads: found when decoded
    (tmp_path / "junk.png").write_text("not an image")  # its header does not: left out of a folder's queue
    session = LabelSession(Queue.from_folder(tmp_path), tmp_path / "d.jsonl", labeler="ana")
    assert [item.name for item in session.queue] == ["bad.png", "good.png"]
    assert session.next() == 1  # bad.png is passed over
    view = session.view()
    assert view["unreadable"] == ["junk.png", "bad.png"] and view["item"]["name"] == "good.png"
    assert session.log.active[str(bad.resolve())].extra["reason"].startswith("cannot read image")
    session.decide(1, "like")
    assert session.complete and str(session.progress()) == "2 of 2 done: 1 liked, 0 disliked, 0 skipped, 1 unreadable"
    assert session.undo().image == str(good.resolve())  # undo passes over the core's own note


def test_wait_returns_when_another_writer_finishes_the_queue_or_at_the_timeout(tmp_path):
    paths = [write_png(tmp_path / f"{i}.png") for i in range(4)]
    waiter = LabelSession(Queue(paths), tmp_path / "d.jsonl", labeler="round")
    assert not waiter.wait(timeout=0.05, poll=0.01).complete

    person = LabelSession(Queue(paths), tmp_path / "d.jsonl", labeler="ana")

    def label():
        while (i := person.next()) is not None:
            person.decide(i, "like" if i % 2 else "dislike")

    seen = []
    thread = threading.Thread(target=label)
    thread.start()
    progress = waiter.wait(timeout=30, poll=0.01, on_progress=seen.append)
    thread.join()
    assert progress.complete and progress.liked == 2 and progress.disliked == 2
    assert seen[-1] == progress and all(a != b for a, b in zip(seen, seen[1:]))  # called on changes only


def test_queue_sources_that_cannot_be_labelled_are_one_line(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "notes.csv").write_text("file,text\na.png,hi\n")
    assert main(["label", "progress", str(tmp_path / "notes.csv")]) == 2
    assert "notes.csv: missing column(s) ['image', 'caption']" in capsys.readouterr().err
    pq.write_table(pa.table({"image": [write_png(tmp_path / "a.png").read_bytes()], "caption": ["x"]}), tmp_path / "b.parquet")
    assert main(["label", "progress", str(tmp_path / "b.parquet")]) == 2
    assert "holds its images as bytes" in capsys.readouterr().err
    assert main(["label", "progress", str(tmp_path / "a.png")]) == 2
    assert "give a folder of images or a table" in capsys.readouterr().err
    assert main(["label", "progress", str(tmp_path / "nowhere")]) == 2
    assert "no such folder or table" in capsys.readouterr().err


def test_kto_lab_train_reads_a_labelled_queues_decisions_unchanged(tiny_sd_path, tmp_path, capsys):
    table = write_records(tmp_path / "shots")  # red/green/blue squares; its label column is ignored by the queue
    session = LabelSession(Queue.from_table(table), tmp_path / "shots" / "decisions.jsonl", labeler="ana")
    while (i := session.next()) is not None:
        session.decide(i, "like" if "red" in session.queue[i].caption else "dislike" if i % 3 else "skip")
    assert main(["label", "progress", str(table), "--decisions", str(session.log.path)]) == 0
    assert capsys.readouterr().out.strip().endswith("6 of 6 done: 2 liked, 3 disliked, 1 skipped")
    argv = ["train", "--config", str(TINY_KTO), f"model.pretrained={tiny_sd_path}",
            f"data.train=[{session.log.path}]", f"output_dir={tmp_path / 'run'}", "optim.max_steps=2",
            "checkpoint.every=0", "logging.progress_bar=false"]
    assert main(argv) == 0
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 2
