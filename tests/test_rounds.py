"""Rounds of generate -> label -> train -> evaluate (kto_lab.loop) on tiny random models, on CPU."""

import json
import threading
import time

import numpy as np
import pytest
import yaml

import kto_lab
from kto_lab.data.decisions import DecisionLog
from kto_lab.label import LabelSession, Queue
from kto_lab.loop import LabelsPending, Rounds, load_rounds_config


def tiny_config(tmp_path, base, **over):
    """Two rounds of 3 prompts x 2 images, 2 training steps each, 2 held-out prompts x 2 images."""
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\na green circle\n")
    (tmp_path / "heldout.txt").write_text("a red square\na blue circle\n")
    cfg = {"out_dir": str(tmp_path / "out"), "base": str(base), "prompts": str(tmp_path / "prompts.txt"),
           "eval_prompts": str(tmp_path / "heldout.txt"), "rounds": 2, "images_per_prompt": 2,
           "labeler": {"kind": "scorer", "scorer": {"name": "redness"}, "quantile": 0.5},
           "generate": {"num_inference_steps": 2, "batch_size": 6, "height": 32, "width": 32},
           "train_config": "tiny_kto",
           "train": {"optim": {"max_steps": 2, "batch_size": 2}, "checkpoint": {"every": 1}},
           "eval": {"n_per_prompt": 2}, "progress_bar": False}
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section] = {**cfg.get(section, {}), name: value}
        else:
            cfg[key] = value
    return cfg


def decisions(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_scorer_rounds_log_labels_spent_and_train_from_the_previous_round(tiny_sd_path, tmp_path):
    rows = kto_lab.rounds(tiny_config(tmp_path, tiny_sd_path), log=lambda s: None)
    out = tmp_path / "out"
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["labels_spent"] for r in rows] == [0, 6, 12]
    assert rows[1]["liked"] == 3 and rows[1]["like_rate"] == 0.5  # above the median of round 1's 6 scores
    assert rows[2]["threshold"] == rows[1]["threshold"]  # the bar round 1 set is kept
    for r in rows:
        assert {"reward", "reward_low", "reward_high", "distance"} <= set(r)
    assert rows[0]["distance"] == 0 and rows[1]["distance"] > 0
    logged = decisions(out / "round-02" / "decisions.jsonl")
    assert len(logged) == 6 and all("score" in d and d["labeler"] == "scorer:redness" for d in logged)
    # round 2 trains from round 1's weights on both rounds' labels, against the weights it starts from
    cfg2 = yaml.safe_load((out / "round-02" / "train" / "config.yaml").read_text())
    assert cfg2["model"]["denoiser"] == str(out / "round-01" / "train" / "unet")
    assert cfg2["model"]["reference"] is None
    assert [p.split("/")[-2] for p in cfg2["data"]["train"]] == ["round-01", "round-02"]
    # generation seeds differ between rounds; evaluation seeds do not
    gen = [[json.loads(line)["seed"] for line in (out / f"round-0{k}" / "generated" / "manifest.jsonl").read_text().splitlines()]
           for k in (1, 2)]
    assert not set(gen[0]) & set(gen[1])
    ev = [sorted(json.loads(line)["seed"] for line in (out / f"round-0{k}" / "eval" / "manifest.jsonl").read_text().splitlines())
          for k in (0, 1, 2)]
    assert ev[0] == ev[1] == ev[2]
    import pandas as pd

    log = pd.read_csv(out / "round_log.csv")
    assert list(log["round"]) == [0, 1, 2] and {"like_rate", "labels_spent", "reward", "distance"} <= set(log.columns)
    assert (out / "round_log.png").stat().st_size > 0 and len((out / "round_log.jsonl").read_text().splitlines()) == 3
    # a finished directory runs nothing again; rounds=3 adds one round
    again = Rounds(tiny_config(tmp_path, tiny_sd_path), log=lambda s: None).run()
    assert again == rows
    more = Rounds(tiny_config(tmp_path, tiny_sd_path, rounds=3), log=lambda s: None).run()
    assert [r["labels_spent"] for r in more] == [0, 6, 12, 18]


def test_an_interrupted_round_resumes_its_labels_and_its_training(tiny_sd_path, tmp_path):
    seen = []

    def flaky(images, captions):  # labels round 1, then "crashes" (Ctrl-C) on round 2
        seen.append(len(images))
        if len(seen) == 2:
            raise KeyboardInterrupt
        return ["like" if i % 2 == 0 else "dislike" for i in range(len(images))]

    cfg = tiny_config(tmp_path, tiny_sd_path, labeler={"kind": "callable"})
    r = Rounds(cfg, labeler=flaky, log=lambda s: None)
    with pytest.raises(KeyboardInterrupt):
        r.run()
    out = tmp_path / "out"
    assert (out / "round-01" / "round.json").is_file() and not (out / "round-02" / "round.json").exists()
    weights = out / "round-01" / "train" / "unet" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    eval_rows = len((out / "round-00" / "eval" / "manifest.jsonl").read_text().splitlines())
    session = LabelSession(Queue.from_table(out / "round-02" / "queue.csv"), out / "round-02" / "decisions.jsonl", "x")
    session.decide(0, "like")  # a person labelled one image of round 2 meanwhile

    calls = []

    def good(images, captions):
        calls.append(len(images))
        return [i % 2 == 0 for i in range(len(images))]

    r = Rounds(cfg, labeler=good, log=lambda s: None)
    r.label(2)
    assert calls == [5]  # only what had no decision: round 1 and the image labelled by hand are kept
    # training is interrupted after one step, then resumes from its checkpoint
    from kto_lab.sd.trainer import Trainer

    Trainer(r.train_config(2)).fit(stop_at=1)
    assert (out / "round-02" / "train" / "checkpoints" / "checkpoint-0000001").is_dir()
    rows = r.run()
    assert [row["labels_spent"] for row in rows] == [0, 6, 12]
    steps = [json.loads(line)["step"] for line in (out / "round-02" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert weights.stat().st_mtime_ns == stamp  # round 1 was not trained again
    assert len((out / "round-00" / "eval" / "manifest.jsonl").read_text().splitlines()) == eval_rows  # nor the base evaluated
    log = DecisionLog(out / "round-02" / "decisions.jsonl")
    assert len(log.active) == 6 and len(decisions(out / "round-02" / "decisions.jsonl")) == 6  # each image once


def test_a_person_labels_while_the_rounds_wait(tiny_sd_path, tmp_path):
    """The rounds loop waits (LabelSession.wait) while another thread labels each round as a front would."""
    cfg = tiny_config(tmp_path, tiny_sd_path, labeler={"kind": "person", "name": "ana", "serve": False, "poll": 0.05})
    out = tmp_path / "out"
    errors = []

    def person():
        try:
            for k in (1, 2):
                queue_table = out / f"round-0{k}" / "queue.csv"
                deadline = time.monotonic() + 120
                while not queue_table.is_file():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"round {k}'s queue never appeared")
                    time.sleep(0.05)
                session = LabelSession(Queue.from_table(queue_table), out / f"round-0{k}" / "decisions.jsonl", "ana")
                for i in range(len(session.queue)):
                    time.sleep(0.02)
                    session.decide(i, "like" if i % 2 == 0 else "dislike")
        except Exception as e:  # noqa: BLE001 -- reported by the test
            errors.append(e)

    thread = threading.Thread(target=person, daemon=True)
    thread.start()
    messages = []
    rows = Rounds(cfg, log=messages.append).run()
    thread.join(timeout=60)
    assert not errors
    assert [r["like_rate"] for r in rows[1:]] == [0.5, 0.5]
    assert any("waiting for 6 label(s)" in m for m in messages)
    assert {d["labeler"] for d in decisions(out / "round-01" / "decisions.jsonl")} == {"ana"}
    assert "reward" not in rows[1] and "distance" in rows[1]  # no scorer named: a person's rounds log no reward


def test_a_person_who_does_not_finish_stops_the_command_with_status_4(tiny_sd_path, tmp_path, capsys):
    from kto_lab.cli import main

    cfg = tiny_config(tmp_path, tiny_sd_path, rounds=1, labeler={"kind": "person", "serve": True, "port": 0,
                                                                  "timeout": 0.2, "poll": 0.05})
    path = tmp_path / "rounds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["rounds", "--config", str(path)]) == 4
    captured = capsys.readouterr()
    assert "open http://127.0.0.1:" in captured.out  # the page was served while the command waited
    assert "stopped waiting: round 1: 0 of 6 done" in captured.err
    r = Rounds(cfg, log=lambda s: None)
    with pytest.raises(LabelsPending):
        r.label(1, wait=False)
    for i in range(6):
        r.session(1).decide(i, "like" if i < 2 else "dislike")
    assert r.label(1, wait=False)["liked"] == 2  # the labels arrived: no wait


def test_dpo_rounds_train_on_pairs_within_a_prompt(tiny_sd_path, tmp_path):
    cfg = tiny_config(tmp_path, tiny_sd_path, rounds=1, train__objective={"objective": "dpo"})
    rows = kto_lab.rounds(cfg, log=lambda s: None)
    out = tmp_path / "out" / "round-01"
    import pandas as pd

    pairs = pd.read_csv(out / "pairs.csv")
    labels = {d["image"]: d for d in decisions(out / "decisions.jsonl")}
    assert rows[1]["pairs"] == len(pairs) > 0
    for _, p in pairs.iterrows():
        w, l = labels[p.image_w], labels[p.image_l]
        assert w["caption"] == l["caption"] == p.caption and w["decision"] == "like" and l["decision"] == "dislike"
    assert yaml.safe_load((out / "train" / "config.yaml").read_text())["data"]["train"] == [str(out / "pairs.csv")]


def test_lora_rounds_fuse_the_adapters_and_train_against_the_base(tiny_sd_path, tmp_path):
    import torch

    from kto_lab.sd.models import load_pipeline

    cfg = tiny_config(tmp_path, tiny_sd_path, reference="base",
                      train={"optim": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2}, "checkpoint": {"every": 0},
                             "lora": {"enabled": True, "rank": 2, "reference": "frozen_copy"}})
    rows = kto_lab.rounds(cfg, log=lambda s: None)
    out = tmp_path / "out"
    fused = out / "round-01" / "model" / "unet"
    assert (fused / "config.json").is_file() and len(rows) == 3
    cfg2 = yaml.safe_load((out / "round-02" / "train" / "config.yaml").read_text())
    assert cfg2["model"]["denoiser"] == str(fused) and cfg2["model"]["reference"] == str(tiny_sd_path)
    # the fused denoiser draws what the base with round 1's adapters draws
    kw = dict(prompt=["a red circle"], num_inference_steps=2, height=32, width=32, output_type="np")
    lora = load_pipeline(tiny_sd_path, lora_path=out / "round-01" / "train" / "pytorch_lora_weights.safetensors")
    merged = load_pipeline(tiny_sd_path, denoiser_path=fused)
    base = load_pipeline(tiny_sd_path)
    a, b, c = (p(generator=torch.Generator().manual_seed(0), **kw).images for p in (lora, merged, base))
    assert np.abs(a - b).max() < 1e-4 < np.abs(a - c).max()


def test_rounds_work_for_sd3_through_the_family_seam(tiny_sd3_path, tmp_path):
    cfg = tiny_config(tmp_path, tiny_sd3_path, train_config=None,
                      train={"cpu": True, "objective": {"beta": 50}, "optim": {"max_steps": 2, "batch_size": 2,
                                                                                "learning_rate": 1e-4, "warmup_steps": 0},
                             "data": {"resolution": 32}, "checkpoint": {"every": 0}, "logging": {"log_every": 1}})
    rows = kto_lab.rounds(cfg, log=lambda s: None)
    out = tmp_path / "out"
    assert [r["labels_spent"] for r in rows] == [0, 6, 12]
    assert yaml.safe_load((out / "round-02" / "train" / "config.yaml").read_text())["model"]["denoiser"] == \
        str(out / "round-01" / "train" / "transformer")


@pytest.mark.parametrize("change, message", [
    ({"train": {"output_dir": "x"}}, "train.output_dir is set by the rounds themselves; set out_dir"),
    ({"train": {"model": {"reference": "x"}}}, "train.model.reference is set by the rounds themselves; set reference"),
    ({"train": {"model": {"unet": "x"}}}, "train.model.unet is set by the rounds themselves; set nothing (round K"),
    ({"train": {"objective": {"objective": "csft"}}}, "csft samples with a prompt prefix"),
    ({"labeler": {"kind": "robot"}}, "labeler.kind='robot' is not allowed"),
    ({"labeler": {"quantile": None}}, "needs labeler.threshold or labeler.quantile"),
    ({"labeler": {"kind": "callable"}}, "labeler.kind=callable needs labeler.function"),
    ({"reference": "parent"}, "reference='parent' is not allowed"),
    ({"prompts": "nowhere.txt"}, "prompts: no such prompt file or directory 'nowhere.txt'"),
    ({"eval": {"fidelity": "clip"}}, "eval.fidelity='clip' is not one of the scorers ['redness']"),
    ({"prompts_per_round": 9}, "prompts_per_round=9 is more than the 3 prompts"),
    ({"generate": {"sampler": "Nope"}}, "generate.sampler='Nope' is not a diffusers scheduler class"),
])
def test_bad_input_is_one_line_before_any_model_loads(tiny_sd_path, tmp_path, capsys, change, message):
    from kto_lab.cli import main

    cfg = tiny_config(tmp_path, tiny_sd_path)
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    path = tmp_path / "rounds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["rounds", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out" / "round-00").exists()


def test_a_rounds_directory_refuses_other_settings(tiny_sd_path, tmp_path):
    from kto_lab.config import ConfigError

    cfg = tiny_config(tmp_path, tiny_sd_path)
    Rounds(cfg, log=lambda s: None)  # stores the config; nothing runs yet
    with pytest.raises(ConfigError, match=r"holds rounds made with other settings \(images_per_prompt: 2 -> 3\)"):
        Rounds({**cfg, "images_per_prompt": 3}, log=lambda s: None)
    Rounds({**cfg, "rounds": 5}, log=lambda s: None)  # more rounds continue the same ones
    assert load_rounds_config(cfg).rounds == 2
