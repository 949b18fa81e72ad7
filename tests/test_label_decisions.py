"""The decision log (kto_lab.data.decisions): append-only, replayed into the decisions in force, read by
load_records as records; a kill loses at most the decision being written; racing writers (threads and
processes) never write two decisions in force for one image nor lose one."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kto_lab.data.decisions import AlreadyDecided, DecisionLog, is_decision_log
from kto_lab.data.records import load_records
from kto_lab.data.tables import DataError

REPO = Path(__file__).resolve().parents[1]


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"im{i:03d}.png" for i in range(n)]
    for p in paths:
        p.write_bytes(b"")  # the log never reads images
    return paths


def test_decisions_replay_to_records_that_load_records_reads(tmp_path):
    a, b, c = images(tmp_path / "shots", 3)
    log = DecisionLog(tmp_path / "decisions.jsonl")
    log.decide(a, "a red car", "like", "ana", score=0.7)
    log.decide(b, "a blue car", "dislike", "ana")
    log.decide(c, "a car", "skip", "ana")
    rows = lines(log.path)
    assert [r["decision"] for r in rows] == ["like", "dislike", "skip"]
    assert rows[0]["image"] == "shots/im000.png"  # relative to the log: the folder moves as a whole
    assert rows[0]["labeler"] == "ana" and rows[0]["time"].endswith("+00:00") and rows[0]["label"] == 1
    assert log.path.read_bytes().startswith(b'{"decision":') and is_decision_log(log.path)

    table = load_records(log.path)  # what kto-lab train reads: likes and dislikes, not the skip
    assert len(table) == 2 and table.captions == ["a red car", "a blue car"]
    assert table.labels.tolist() == [1, 0] and table.raw_image(0) == str(a.resolve())
    assert table.scores[0] == 0.7 and table.scores[1] != table.scores[1]  # NaN where no score


def test_undo_appends_and_takes_back_each_labelers_own_last_decision(tmp_path):
    a, b, c = images(tmp_path, 3)
    log = DecisionLog(tmp_path / "d.jsonl")
    log.decide(a, "", "like", "ana")
    log.decide(b, "", "dislike", "bo")
    log.decide(c, "", "like", "ana")
    assert log.undo("ana").image == str(c.resolve())
    assert log.undo("ana").image == str(a.resolve())  # ana's earlier one, not bo's
    assert log.undo("ana") is None
    assert [r["decision"] for r in lines(log.path)] == ["like", "dislike", "like", "undo", "undo"]  # nothing rewritten
    assert list(log.active) == [str(b.resolve())]
    with pytest.raises(AlreadyDecided, match="already labelled 'dislike' by bo"):
        log.decide(b, "", "like", "ana")
    log.decide(a, "", "dislike", "ana")  # after the undo a new decision is allowed
    assert len(DecisionLog(log.path).active) == 2  # a fresh replay agrees


def test_a_cut_last_line_is_ignored_by_readers_and_dropped_by_the_next_writer(tmp_path):
    a, b = images(tmp_path, 2)
    log = DecisionLog(tmp_path / "d.jsonl")
    log.decide(a, "x", "like", "ana")
    with open(log.path, "ab") as f:
        f.write(b'{"decision": "dislike", "image": "im001.png", "cap')  # a writer killed mid-line
    assert len(load_records(log.path)) == 1
    assert DecisionLog(log.path).cut_tail > 0
    with pytest.warns(UserWarning, match="dropped a cut last line"):
        DecisionLog(log.path).decide(b, "y", "dislike", "ana")
    assert [r["decision"] for r in lines(log.path)] == ["like", "dislike"]  # every line is whole again


def test_a_broken_line_in_the_middle_or_a_file_that_is_not_a_log_is_one_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"decision": "like", "image": "a.png", "caption": "", "labeler": "a"}\nnot json\n'
                    '{"decision": "like", "image": "b.png", "caption": "", "labeler": "a"}\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: not valid JSON"):
        load_records(path)
    path.write_text('{"decision": "maybe", "image": "a.png", "caption": "", "labeler": "a"}\n')
    with pytest.raises(DataError, match=r"line 1: decision 'maybe' is not one of"):
        DecisionLog(path)
    records = tmp_path / "records.jsonl"
    records.write_text('{"image": "a.png", "caption": "", "label": 1}\n')
    with pytest.raises(DataError, match="is not a decision log"):
        DecisionLog(records)
    with pytest.raises(DataError, match="must be a .jsonl file"):
        DecisionLog(tmp_path / "d.csv")


def test_racing_threads_on_two_logs_of_one_file_write_each_image_once(tmp_path):
    paths = images(tmp_path, 40)
    logs = [DecisionLog(tmp_path / "d.jsonl") for _ in range(2)]  # as two tabs' sessions, or two labelers
    won = [[] for _ in range(4)]

    def work(k):
        for p in paths:  # all in one order: every image is contested
            try:
                logs[k % 2].decide(p, "", "like", f"t{k}")
                won[k].append(p)
            except AlreadyDecided:
                pass

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = lines(tmp_path / "d.jsonl")
    assert sorted(r["image"] for r in rows) == sorted(p.name for p in paths)  # each image once, none lost
    assert sum(len(w) for w in won) == 40


WRITER = """
import sys, time
from pathlib import Path
from kto_lab.data.decisions import AlreadyDecided, DecisionLog
log_path, go, name, order = sys.argv[1:5]
paths = sorted(Path(log_path).parent.glob("im*.png"))
paths = paths if order == "up" else paths[::-1]
while not Path(go).exists():
    time.sleep(0.001)
log = DecisionLog(log_path)
for p in paths:
    try:
        log.decide(p, "", "like" if name == "a" else "dislike", name)
        print(p.name, flush=True)  # printed only once the decision is on disk
    except AlreadyDecided:
        pass
"""


def _writer(tmp_path, name, order):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "d.jsonl"), str(tmp_path / "go"), name, order],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)


def test_two_processes_racing_over_one_queue_never_duplicate_or_lose_a_decision(tmp_path):
    paths = images(tmp_path, 150)
    writers = [_writer(tmp_path, "a", "up"), _writer(tmp_path, "b", "up")]  # one order: every image contested
    time.sleep(0.5)  # both are waiting at the start line
    (tmp_path / "go").touch()
    won = {name: w.communicate(timeout=60)[0].split() for name, w in zip("ab", writers)}
    assert all(w.returncode == 0 for w in writers)
    rows = lines(tmp_path / "d.jsonl")
    assert len(rows) == 150 and sorted(r["image"] for r in rows) == sorted(p.name for p in paths)
    for name, decision in (("a", "like"), ("b", "dislike")):
        assert sorted(r["image"] for r in rows if r["labeler"] == name) == sorted(won[name])
        assert {r["decision"] for r in rows if r["labeler"] == name} <= {decision}
    assert len(load_records(tmp_path / "d.jsonl")) == 150


def test_a_killed_writer_loses_nothing_it_reported_done(tmp_path):
    images(tmp_path, 400)
    (tmp_path / "go").touch()
    writer = _writer(tmp_path, "a", "up")
    reported = [writer.stdout.readline().strip() for _ in range(20)]  # 20 decisions returned
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    reported += writer.stdout.read().split()
    table = load_records(tmp_path / "d.jsonl")  # whatever the kill cut, the log reads
    assert 20 <= len(reported) <= len(table) <= len(reported) + 1
    assert {Path(table.raw_image(i)).name for i in range(len(table))} >= set(reported)
