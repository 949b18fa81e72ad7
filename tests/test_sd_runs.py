"""Runs users can trust (tiny SD, CPU): an output_dir belongs to one run (refusal, --overwrite,
lock), a resume continues the same run or refuses, corrupt and partial checkpoints, disk full,
consecutive runs in one process, trackers, the model card and ``kto-lab push``."""

import errno
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kto_lab.config import ConfigError
from kto_lab.sd.metrics_log import read_metrics
from kto_lab.sd.trainer import Trainer
from sd_helpers import write_records
from test_sd_trainer import config

HINT = "resume with checkpoint.resume=latest, or choose another output_dir, or pass --overwrite"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("records"))


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: the refusals must come before."""
    import kto_lab.sd.trainer as T

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(T, "load_components", forbidden)


def short(tiny_sd_path, records, out, **sections):
    sections.setdefault("optim", {"max_steps": 2})
    sections.setdefault("checkpoint", {"every": 0})
    return config(tiny_sd_path, records, out, **sections)


# --- A1: an output_dir belongs to one run -----------------------------------------------


def test_used_output_dir_is_refused_before_models_load_and_overwrite_clears_it(
        tiny_sd_path, records, tmp_path, monkeypatch):
    cfg = short(tiny_sd_path, records, tmp_path / "run")
    Trainer(cfg).fit()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with monkeypatch.context() as m:
        m.setattr("kto_lab.sd.trainer.load_components", lambda *a, **k: pytest.fail("a model was loaded"))
        with pytest.raises(ConfigError, match="already holds a run") as err:
            Trainer(cfg)
    assert HINT in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "run.lock").exists()  # a refused claim leaves no lock

    rows_before = read_metrics(tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n')  # mark the old run's rows
    result = Trainer(cfg, overwrite=True).fit()
    assert [r["step"] for r in read_metrics(result.metrics_path)] == [r["step"] for r in rows_before] == [1, 2]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # only a run's own files are deleted


def test_cli_refuses_a_used_output_dir_in_one_line_and_overwrites_on_request(tiny_sd_path, records, tmp_path, capsys):
    from kto_lab.cli import main

    tiny_kto = Path(__file__).resolve().parents[1] / "kto_lab" / "configs" / "tiny_kto.yaml"
    argv = ["train", "--config", str(tiny_kto), f"model.pretrained={tiny_sd_path}", f"data.train=[{records}]",
            f"output_dir={tmp_path / 'tiny'}", "optim.max_steps=2", "checkpoint.every=0", "logging.progress_bar=false"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and HINT in err
    assert main(argv + ["--overwrite"]) == 0


def test_lock_refuses_a_live_run_takes_over_a_stale_one_and_is_released(
        tiny_sd_path, records, tmp_path, capsys, no_model_loads):
    import socket

    from kto_lab.sd.run_dir import RunDirError, claim_output_dir
    from kto_lab.sd.config import load_train_config

    cfg = load_train_config(short(tiny_sd_path, records, tmp_path / "run")).resolved()
    lock = tmp_path / "run" / "run.lock"
    lock.parent.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "earlier"}))
        with pytest.raises(RunDirError, match=f"in use by another run \\(pid {other.pid}"):
            claim_output_dir(cfg)
        with pytest.raises(ConfigError, match="in use by another run"):  # a Trainer refuses before loading
            Trainer(cfg)
    finally:
        other.kill()
        other.wait()
    claim = claim_output_dir(cfg)  # the holder is dead: its lock is taken over, saying so
    assert f"left by pid {other.pid}" in capsys.readouterr().err
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with pytest.raises(RunDirError, match="another Trainer in this process"):
        claim_output_dir(cfg)
    claim.release()
    assert not lock.exists()


def test_lock_is_held_while_training_and_released_at_the_end_and_on_errors(tiny_sd_path, records, tmp_path):
    cfg = short(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 3})
    trainer = Trainer(cfg)
    lock = tmp_path / "run" / "run.lock"
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    trainer.fit(stop_at=1)
    assert lock.exists()  # the run goes on
    result = trainer.fit()
    assert not lock.exists()  # finished
    assert [r["step"] for r in read_metrics(result.metrics_path)] == [1, 2, 3]  # the second fit kept row 1

    cfg = short(tiny_sd_path, records, tmp_path / "boom", optim={"max_steps": 3})
    trainer = Trainer(cfg)
    trainer.step = lambda batch: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert not (tmp_path / "boom" / "run.lock").exists()


def test_prune_and_latest_only_see_this_runs_checkpoints(tmp_path):
    from kto_lab.sd.checkpoints import latest_checkpoint, prune, write_manifest

    root = tmp_path / "checkpoints"
    for run, step in [("a", 10), ("a", 20), ("a", 30), ("b", 1), ("b", 2), ("b", 3)]:
        d = root / f"checkpoint-{run}{step:05d}"
        d.mkdir(parents=True)
        (d / "weights.bin").write_bytes(bytes([step]) * 8)
        write_manifest(d, run_id=run, step=step, num_processes=1, config={})
    prune(root, "b", keep=1)
    assert sorted(p.name for p in root.iterdir()) == [
        "checkpoint-a00010", "checkpoint-a00020", "checkpoint-a00030", "checkpoint-b00003"]
    assert latest_checkpoint(root).name == "checkpoint-a00030"  # the newest run's newest, by step


def test_manifest_names_a_missing_truncated_or_corrupt_file(tmp_path):
    from kto_lab.sd.checkpoints import problem, write_manifest

    d = tmp_path / "checkpoint-0000001"
    (d / "unet").mkdir(parents=True)
    (d / "unet" / "w.bin").write_bytes(b"abcdef")
    (d / "optimizer.bin").write_bytes(b"123456")
    assert "manifest.json" in problem(d)  # not complete until the manifest is written
    write_manifest(d, run_id="r", step=1, num_processes=1, config={})
    assert problem(d) is None
    (d / "unet" / "w.bin").write_bytes(b"abcdeX")  # same size, other bytes
    assert problem(d) == f"{d / 'unet' / 'w.bin'} is corrupt (its checksum differs from the one written)"
    (d / "unet" / "w.bin").write_bytes(b"abc")
    assert "w.bin is truncated or changed (3 bytes, 6 written)" in problem(d)
    (d / "unet" / "w.bin").unlink()
    assert problem(d) == f"{d / 'unet' / 'w.bin'} is missing"


# --- A2: a resume continues the same run or refuses --------------------------------------


def test_resume_with_other_run_settings_is_refused_naming_each_field(tiny_sd_path, records, tmp_path, monkeypatch):
    cfg = short(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 4}, checkpoint={"every": 2})
    first = Trainer(cfg)
    first.fit(stop_at=3)
    first.close()
    saved = (tmp_path / "run" / "config.yaml").read_text()
    changed = ["checkpoint.resume=latest", "objective.beta=30", "optim.batch_size=2", "data.gamma=0.5",
               "lora.enabled=true", "seed=1", "optim.max_steps=3"]
    with monkeypatch.context() as m:
        m.setattr("kto_lab.sd.trainer.load_components", lambda *a, **k: pytest.fail("a model was loaded"))
        with pytest.raises(ConfigError) as err:
            Trainer(cfg, overrides=changed)
    msg = str(err.value)
    for field in ("objective.beta: 20.0 -> 30.0", "optim.batch_size: 4 -> 2", "data.gamma: 0.8 -> 0.5",
                  "lora.enabled: False -> True", "seed: 0 -> 1", "optim.max_steps: 4 -> 3"):
        assert field in msg, field
    assert "\n" not in msg and (tmp_path / "run" / "config.yaml").read_text() == saved

    # what may change: max_steps upward, logging, checkpoint cadence
    resumed = Trainer(cfg, overrides=["checkpoint.resume=latest", "optim.max_steps=5", "logging.log_every=2",
                                      "checkpoint.every=1", "checkpoint.keep=3"])
    assert resumed.global_step == 2 and resumed.fit().global_step == 5


def test_a_checkpoint_written_before_the_denoiser_rename_resumes(tiny_sd_path, records, tmp_path):
    """A run of a kto_lab from before model.unet was called model.denoiser saved the old name in its checkpoints:
    it resumes (the names are matched), and a different denoiser is still refused, under the new name."""
    from kto_lab.sd.run_dir import config_differences

    cfg = short(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 4}, checkpoint={"every": 2},
                model={"denoiser": str(tiny_sd_path / "unet")})
    Trainer(cfg).fit(stop_at=3)
    (checkpoint,) = (tmp_path / "run" / "checkpoints").glob("checkpoint-*")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["config"]["model"]["unet"] = manifest["config"]["model"].pop("denoiser")  # as the older kto_lab wrote it
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    resumed = Trainer(cfg, overrides=["checkpoint.resume=latest"])
    assert resumed.global_step == 2 and resumed.fit().global_step == 4
    other = {**cfg, "model": {**cfg["model"], "denoiser": str(tiny_sd_path)}}
    assert config_differences(manifest["config"], {**manifest["config"], "model": other["model"]}) == \
        [f"model.denoiser: {str(tiny_sd_path / 'unet')!r} -> {str(tiny_sd_path)!r}"]


def test_a_finished_run_keeps_its_weights_when_resumed_with_fewer_steps(tiny_sd_path, records, tmp_path):
    cfg = short(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 4}, checkpoint={"every": 2})
    weights = Path(Trainer(cfg).fit().weights) / "diffusion_pytorch_model.safetensors"
    before = weights.read_bytes()
    with pytest.raises(ConfigError, match=r"optim\.max_steps: 4 -> 3 .*final weights .* are kept"):
        Trainer(cfg, overrides=["checkpoint.resume=latest", "optim.max_steps=3"])
    assert weights.read_bytes() == before

    # a finished run without checkpoints cannot be "resumed" by starting it again
    cfg = short(tiny_sd_path, records, tmp_path / "no_ckpt")
    Trainer(cfg).fit()
    with pytest.raises(ConfigError, match="finished run without a checkpoint"):
        Trainer(cfg, overrides=["checkpoint.resume=latest"])


# --- A3: corrupt or partial checkpoints, disk full ----------------------------------------


def test_truncated_file_in_newest_checkpoint_falls_back_to_the_previous(tiny_sd_path, records, tmp_path, capsys):
    cfg = short(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 6}, checkpoint={"every": 2, "keep": 0})
    trainer = Trainer(cfg)
    trainer.fit(stop_at=4)
    trainer.close()
    newest = tmp_path / "run" / "checkpoints" / "checkpoint-0000004"
    victim = newest / "optimizer.bin"
    victim.write_bytes(victim.read_bytes()[:100])
    resumed = Trainer(cfg, overrides=["checkpoint.resume=latest"])
    assert resumed.global_step == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "truncated" in err and "checkpoint-0000002 instead" in err

    # a checkpoint without its manifest (a crash before the rename's last file) is passed over too
    resumed.close()
    (newest / "manifest.json").unlink()
    assert Trainer(cfg, overrides=["checkpoint.resume=latest"]).global_step == 2


def test_disk_full_while_saving_names_the_path_and_keeps_the_previous_checkpoint(
        tiny_sd_path, records, tmp_path, monkeypatch):
    from kto_lab.sd.checkpoints import CheckpointError, problem

    cfg = short(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 6}, checkpoint={"every": 2})
    trainer = Trainer(cfg)
    trainer.fit(stop_at=2)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if "checkpoint-0000004" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"no space left on device while writing .*\.tmp-checkpoint-0000004") as e:
        trainer.fit()
    assert "\n" not in str(e.value) and "checkpoint-0000002" in str(e.value)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-0000002"]  # no .tmp- left
    assert problem(checkpoints / "checkpoint-0000002") is None
    monkeypatch.setattr(torch, "save", real_save)
    assert not (tmp_path / "run" / "run.lock").exists()  # released on the error
    assert Trainer(cfg, overrides=["checkpoint.resume=latest"]).global_step == 2


# --- C1: several runs in one process ---------------------------------------------------------


def test_consecutive_runs_with_other_precisions_in_one_process(tiny_sd_path, records, tmp_path):
    first = Trainer(short(tiny_sd_path, records, tmp_path / "fp32"))
    assert first.fit().global_step == 2
    second = Trainer(short(tiny_sd_path, records, tmp_path / "bf16",
                           optim={"max_steps": 2, "mixed_precision": "bf16"}))
    assert second.accelerator.mixed_precision == "bf16" and second.weight_dtype == torch.bfloat16
    assert second.fit().global_step == 2


# --- C3: trackers -----------------------------------------------------------------------------


def test_report_to_is_checked_when_the_config_is_read(monkeypatch):
    from kto_lab.sd import metrics_log
    from kto_lab.sd.config import load_train_config

    assert load_train_config(None, ["logging.report_to=none"]).logging.report_to == []
    monkeypatch.setattr(metrics_log, "tracker_installed", lambda name: False)
    with pytest.raises(ConfigError, match=r"wandb is not installed; pip install 'kto-lab\[wandb\]'"):
        load_train_config(None, ["logging.report_to=[wandb]"])
    with pytest.raises(ConfigError, match="logging.report_to='comet'"):
        load_train_config(None, ["logging.report_to=[comet]"])
    with pytest.raises(ConfigError, match=r"logging.tensorboard was replaced: use logging.report_to=\[tensorboard\]"):
        load_train_config(None, ["logging.tensorboard=true"])
    full = load_train_config(Path(__file__).resolve().parents[1] / "kto_lab" / "configs" / "sd15_kto_full.yaml")
    assert full.logging.report_to == []  # ships no tracker (TensorBoard is an extra)


def test_trackers_get_the_config_metrics_and_images_and_a_model_card_is_written(tiny_sd_path, records, tmp_path):
    from accelerate.tracking import GeneralTracker
    from huggingface_hub import ModelCard

    class Recorder(GeneralTracker):
        name = "recorder"
        requires_logging_directory = False

        def __init__(self):
            super().__init__()
            self.config, self.rows, self.images, self.finished = None, [], [], False

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.rows.append((step, values))

        def log_images(self, values, step=None, **kwargs):
            self.images.append((step, {k: len(v) for k, v in values.items()}))

        def finish(self):
            self.finished = True

    rec = Recorder()
    cfg = short(tiny_sd_path, records, tmp_path / "lora", lora={"enabled": True, "rank": 4},
                logging={"log_every": 1, "progress_bar": False, "validation_prompts": ["a red square"],
                         "validation_every": 2, "validation_inference_steps": 2})
    result = Trainer(cfg, trackers=[rec]).fit()
    assert rec.config["objective.beta"] == 20.0 and rec.config["lora.rank"] == 4
    assert [s for s, _ in rec.rows] == [1, 2] and "loss" in rec.rows[-1][1] and "rewards/accuracy" in rec.rows[-1][1]
    assert rec.images == [(2, {"validation": 1})] and rec.finished
    assert [r["step"] for r in read_metrics(result.metrics_path)] == [1, 2]  # the files stay

    card = ModelCard.load(tmp_path / "lora" / "README.md")
    assert {"kto-lab", "kto", "lora", "text-to-image"} <= set(card.data.tags) and card.data.library_name == "diffusers"
    for text in ("Diffusion-KTO", "beta 20", "2 desirable, 4 undesirable", "`records.csv`", "rank-4 LoRA",
                 "load_lora_weights", "rewards/accuracy"):
        assert text in card.text, text
    # issue 21, 10: the Hub's conventions; a local base is "local" by its folder's name, not its absolute path
    assert str(tiny_sd_path) not in card.content and f"a local model (`{tiny_sd_path.name}`; not on the Hub)" in card.text
    assert card.data.base_model is None and card.data.license == "other" and card.data.pipeline_tag == "text-to-image"
    assert card.data.widget == [{"text": "a red square", "output": {"url": "validation/step-0000002/00.png"}}]
    assert "## Validation images (step 2)\n\n![a red square](validation/step-0000002/00.png)" in card.text


def test_model_card_names_the_base_by_its_hub_id_and_license(tmp_path):
    """issue 21, 10: a base from the Hub is named by its id (also when loaded from a local Hub cache folder);
    its license is read from the base's own model card."""
    from huggingface_hub import ModelCard

    from kto_lab.sd.config import load_train_config
    from kto_lab.sd.families import FAMILIES
    from kto_lab.sd.model_card import base_model_id, write_model_card

    snapshot = tmp_path / "hub" / "models--stable-diffusion-v1-5--stable-diffusion-v1-5" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n# SD 1.5\n")
    assert base_model_id(str(snapshot)) == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert base_model_id("org/name") == "org/name" and base_model_id(str(tmp_path)) is None
    from dataclasses import asdict

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_train_config({"output_dir": str(run), "model": {"pretrained": str(snapshot)},
                             "data": {"train": ["r.csv"]}, "lora": {"enabled": True}}).resolved(FAMILIES["sd"])
    card = ModelCard.load(write_model_card(run, asdict(cfg), metrics={}, counts={}, family=FAMILIES["sd"]))
    assert card.data.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert card.data.license == "creativeml-openrail-m" and str(snapshot) not in card.content
    assert 'from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5"' in card.text


# --- C5: kto-lab push (offline: the Hub API is replaced) --------------------------------------


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls and what each uploaded file held."""

    calls: list = []

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://hub.example/{repo_id}"

    def create_commit(self, repo_id, operations, **kw):
        files = {}
        for op in operations:
            src = op.path_or_fileobj
            files[op.path_in_repo] = src if isinstance(src, bytes) else Path(src).read_bytes()
        self.calls.append(("create_commit", repo_id, files))


def finished_run(tmp_path, pretrained="org/base-model"):
    from dataclasses import asdict

    from kto_lab.sd.config import load_train_config
    from kto_lab.sd.families import FAMILIES
    from kto_lab.sd.model_card import write_model_card

    run = tmp_path / "run"
    run.mkdir()
    sd = FAMILIES["sd"]
    cfg = load_train_config({"output_dir": str(run), "model": {"pretrained": pretrained},
                             "data": {"train": ["r.csv"]}, "lora": {"enabled": True}}).resolved(sd)
    (run / "config.yaml").write_text(yaml.safe_dump(asdict(cfg)))
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 0.5, "rewards/accuracy": 0.75}\n')
    (run / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    write_model_card(run, asdict(cfg), metrics={"loss": 0.5}, counts={"desirable": 3, "undesirable": 1}, family=sd)
    return run


def test_push_uploads_a_finished_run_and_refuses_one_without_weights(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from kto_lab.cli import main

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    run = finished_run(tmp_path)
    (run / "pytorch_lora_weights.safetensors").rename(tmp_path / "w")
    assert main(["push", str(run), "me/kto-model"]) == 2  # no final weights yet
    err = capsys.readouterr().err.strip()
    assert "no final weights" in err and "\n" not in err and not FakeHub.calls

    (tmp_path / "w").rename(run / "pytorch_lora_weights.safetensors")
    local_card = (run / "README.md").read_text()
    assert f'load_lora_weights("{run}")' in local_card  # as the finished run wrote it
    assert main(["push", str(run), "me/kto-model", "--private", "--token", "hf_x"]) == 0
    assert FakeHub.calls[0] == ("init", "hf_x")
    assert FakeHub.calls[1] == ("create_repo", "me/kto-model", {"private": True, "exist_ok": True})
    _, repo, files = FakeHub.calls[2]
    assert repo == "me/kto-model"
    card = files["README.md"].decode()
    assert 'load_lora_weights("me/kto-model")' in card and str(run) not in card and "3 desirable, 1 undesirable" in card
    assert "base_model: org/base-model" in card
    assert (run / "README.md").read_text() == local_card  # the local card is not rewritten

    (run / "README.md").unlink()  # a run without a card (older kto_lab) gets one from config.yaml and metrics ...
    assert main(["push", str(run), "me/kto-model"]) == 2  # ... for the family of its pipeline, which must be readable
    err = capsys.readouterr().err.strip()
    assert "config.yaml: model.pretrained='org/base-model'" in err and "set model.family" in err and "\n" not in err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["model"]["family"] = "sd"
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["push", str(run), "me/kto-model"]) == 0
    card = FakeHub.calls[-1][2]["README.md"].decode()
    assert 'load_lora_weights("me/kto-model")' in card and "| loss | 0.5 |" in card and not (run / "README.md").exists()


# --- the data a run and a cache are made of -----------------------------------------------------


def flipped(table: Path) -> Path:
    """``table`` with every label flipped, beside it (same images)."""
    import csv

    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    out = table.with_name("flipped.csv")
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, ["image", "caption", "label"])
        w.writeheader()
        w.writerows({**r, "label": 1 - int(r["label"])} for r in rows)
    return out


def test_a_cache_is_keyed_on_its_data_and_auto_gives_each_dataset_its_own(tiny_sd_path, tmp_path, monkeypatch):
    from kto_lab.sd.cache import read_manifest

    table = write_records(tmp_path / "data")
    other = flipped(table)
    cache = tmp_path / "cache"
    one_step = {"optim": {"max_steps": 1}, "checkpoint": {"every": 0}}
    Trainer(short(tiny_sd_path, table, tmp_path / "a", data={"cache_dir": str(cache)}, **one_step)).fit()
    with monkeypatch.context() as m:  # the flipped labels are not trained on the old cache: refused before loading
        m.setattr("kto_lab.sd.trainer.load_components", lambda *a, **k: pytest.fail("a model was loaded"))
        with pytest.raises(ConfigError, match=rf"latent cache '{cache}' was built from other data than data.train: "
                                              rf"the table files were \['{table}'\], now \['{other}'\]") as err:
            Trainer(short(tiny_sd_path, other, tmp_path / "b", data={"cache_dir": str(cache)}, **one_step))
        assert "data.cache_dir=auto" in str(err.value) and "\n" not in str(err.value)
        table.write_text(table.read_text().replace("red0.png,a red square,1", "red0.png,a red square,0"))
        with pytest.raises(ConfigError, match=rf"{table} has changed since \(6 rows then, 6 now"):
            Trainer(short(tiny_sd_path, table, tmp_path / "b", data={"cache_dir": str(cache)}, **one_step))

    # data.cache_dir=auto: one cache per dataset and model, beside the runs
    runs = tmp_path / "runs"
    for name, data in (("kto", table), ("flipped", other)):
        Trainer(short(tiny_sd_path, data, runs / name, data={"cache_dir": "auto"}, **one_step)).fit()
    caches = sorted((runs / "latent_cache").iterdir())
    assert len(caches) == 2 and all(c.name.startswith("sd-32px-") for c in caches)
    labels = {tuple(read_manifest(c)["sources"]): c for c in caches}
    assert set(labels) == {(str(table),), (str(other),)}
    again = Trainer(short(tiny_sd_path, other, runs / "again", data={"cache_dir": "auto"}, **one_step))
    assert again.cfg.data.cache_dir == str(labels[(str(other),)]) and again.components.vae is None  # reused
    again.close()


def test_a_cache_dir_that_is_not_a_cache_a_truncated_shard_and_a_full_disk_are_one_line(
        tiny_sd_path, records, tmp_path, monkeypatch):
    import safetensors.torch

    from kto_lab.sd.checkpoints import CheckpointError
    from kto_lab.data.tables import DataError

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with monkeypatch.context() as m:
        m.setattr("kto_lab.sd.trainer.load_components", lambda *a, **k: pytest.fail("a model was loaded"))
        with pytest.raises(ConfigError, match=rf"data.cache_dir='{folder}' is a folder that is not a latent cache"):
            Trainer(short(tiny_sd_path, records, tmp_path / "a", data={"cache_dir": str(folder)}))
    assert (folder / "notes.txt").read_text() == "mine"

    cache = tmp_path / "cache"
    real_save = safetensors.torch.save_file

    def full_disk(tensors, filename, *a, **k):
        if "shard-00001" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *a, **k)

    cfg = short(tiny_sd_path, records, tmp_path / "b", data={"cache_dir": str(cache), "cache_shard_size": 4},
                optim={"max_steps": 1})
    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", full_disk)
        with pytest.raises(CheckpointError, match=rf"no space left on device while writing {cache}.partial \(removed it\)"):
            Trainer(cfg).fit()
    assert not cache.exists() and not Path(f"{cache}.partial").exists()

    Trainer(cfg, overwrite=True).fit()
    shard = cache / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"latent cache shard {shard} cannot be read .*truncated or corrupt; delete {cache}"):
        Trainer(cfg, overwrite=True)


def test_resume_refuses_changed_data_and_takes_the_same_file_by_another_path(tiny_sd_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = write_records(tmp_path / "data")
    cfg = short(tiny_sd_path, Path("data") / "records.csv", tmp_path / "run", optim={"max_steps": 4},
                checkpoint={"every": 2})
    first = Trainer(cfg)
    first.fit(stop_at=3)
    first.close()
    same = Trainer(cfg, overrides=["checkpoint.resume=latest", f"data.train=[{table}]"])  # absolute: the same file
    assert same.global_step == 2
    same.close()

    table.write_text(table.read_text().replace("blue1.png,a blue square,0", "blue1.png,a blue square,1"))
    with monkeypatch.context() as m:
        m.setattr("kto_lab.sd.trainer.load_components", lambda *a, **k: pytest.fail("a model was loaded"))
        with pytest.raises(ConfigError, match=rf"cannot resume .*checkpoint-0000002: the run was made with other settings: "
                                              rf"data.train: {table} has changed since") as err:
            Trainer(cfg, overrides=["checkpoint.resume=latest"])
    assert "\n" not in str(err.value)


# --- only what a run wrote is ever deleted or replaced ------------------------------------------


def test_overwrite_deletes_only_what_a_run_wrote_and_a_users_files_are_refused(tiny_sd_path, records, tmp_path,
                                                                               no_model_loads):
    out = tmp_path / "mine"
    (out / "logs").mkdir(parents=True)
    (out / "validation").mkdir()
    files = {"README.md": "my notes", "logs/train.log": "my log", "validation/holdout.csv": "image,caption\n"}
    for name, text in files.items():
        (out / name).write_text(text)
    validating = {"validation_prompts": ["a red square"], "validation_every": 1}
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=rf"output_dir {out} holds README.md, validation, which kto_lab did not "
                                              rf"write and a run writes .*: move them") as err:
            Trainer(short(tiny_sd_path, records, out, logging=validating), overwrite=overwrite)
        assert "\n" not in str(err.value)
    assert {n: (out / n).read_text() for n in files} == files and not (out / "run.lock").exists()


def test_a_run_beside_a_users_files_keeps_them_through_overwrite(tiny_sd_path, records, tmp_path):
    out = tmp_path / "run"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "train.log").write_text("my log")  # e.g. `kto-lab train ... > run/logs/train.log`
    (out / "notes.txt").write_text("mine")
    cfg = short(tiny_sd_path, records, out)
    Trainer(cfg).fit()
    assert (out / "README.md").is_file() and (out / "unet").is_dir()
    Trainer(cfg, overwrite=True).close()  # the claim alone: the earlier run's files are gone, the user's stay
    assert not (out / "unet").exists() and not (out / "README.md").exists() and not (out / "metrics.jsonl").exists()
    assert (out / "logs" / "train.log").read_text() == "my log" and (out / "notes.txt").read_text() == "mine"


def test_an_output_dir_that_overlaps_an_input_is_refused_before_anything_is_deleted(tiny_sd_path, records, tmp_path,
                                                                                   no_model_loads):
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_sd_path, pipe)
    before = sorted(p.relative_to(pipe) for p in pipe.rglob("*"))
    cfg = short(pipe, records, pipe)
    for out, field in ((pipe, r"is model.pretrained="), (pipe / "unet", r"is inside model.pretrained=")):
        with pytest.raises(ConfigError, match=rf"output_dir='{out}' {field}'{pipe}': a run would write its files among"):
            Trainer({**cfg, "output_dir": str(out)}, overwrite=True)
    assert sorted(p.relative_to(pipe) for p in pipe.rglob("*")) == before  # the base model is whole

    run = tmp_path / "run"  # continuing from a finished run's UNet into the same directory would delete it first
    (run / "unet").mkdir(parents=True)
    shutil.copy(pipe / "unet" / "config.json", run / "unet" / "config.json")
    with pytest.raises(ConfigError, match=rf"model.denoiser='{run / 'unet'}' lies in {run / 'unet'}, which the run in "
                                          rf"output_dir='{run}' writes \(and --overwrite deletes\)"):
        Trainer(short(pipe, records, run, model={"pretrained": str(pipe), "denoiser": str(run / "unet")}), overwrite=True)
    assert (run / "unet" / "config.json").is_file()

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match=rf"output_dir='{tmp_path / 'a_file'}' is a file, not a directory"):
        Trainer(short(pipe, records, tmp_path / "a_file"))
    read_only = Path("/sys/kernel")  # not writable, even by root (tests here run as root, where chmod does not bind)
    if os.geteuid() != 0:
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
    if os.access(read_only, os.W_OK) and os.geteuid() != 0:
        pytest.skip("no read-only directory to test with")
    with pytest.raises(ConfigError, match=rf"output_dir='{read_only}' is not a writable directory"):
        Trainer(short(pipe, records, read_only))


@pytest.mark.parametrize("name", ["checkpoints", "validation", "unet"])
def test_overwrite_refuses_a_symlinked_run_folder_and_deletes_nothing(tiny_sd_path, records, tmp_path, capsys, name):
    """Issue 21, 7b: a symbolic link at checkpoints/, validation/ or the denoiser folder (unet/) of a run, with
    --overwrite: one line naming it, and nothing deleted, neither in the run nor where the link points."""
    from kto_lab.cli import main

    run = tmp_path / "run"
    validating = {"validation_prompts": ["a red square"], "validation_every": 2, "validation_inference_steps": 2}
    Trainer(short(tiny_sd_path, records, run, logging=validating, checkpoint={"every": 2})).fit()
    assert (run / name).is_dir() and not (run / name).is_symlink()
    shutil.rmtree(run / name)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "keep.txt").write_text("keep")
    (run / name).symlink_to(elsewhere, target_is_directory=True)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    tiny_kto = Path(__file__).resolve().parents[1] / "kto_lab" / "configs" / "tiny_kto.yaml"
    argv = ["train", "--config", str(tiny_kto), f"model.pretrained={tiny_sd_path}", f"data.train=[{records}]",
            f"output_dir={run}", "optim.max_steps=1", "logging.validation_prompts=[a red square]",
            "logging.validation_every=2", "--overwrite"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{run / name} is a symbolic link" in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # nothing deleted
    assert (elsewhere / "keep.txt").read_text() == "keep" and (elsewhere / "sub").is_dir()
    assert not (run / "run.lock").exists()


def test_the_model_card_never_follows_a_symbolic_link(tiny_sd_path, records, tmp_path):
    from kto_lab.sd.model_card import write_model_card

    cfg = short(tiny_sd_path, records, tmp_path / "run")
    Trainer(cfg).fit()
    target = tmp_path / "someone_elses.md"
    target.write_text("theirs")
    card = tmp_path / "run" / "README.md"
    card.unlink()
    card.symlink_to(target)
    from kto_lab.sd.config import load_train_config
    from kto_lab.sd.families import FAMILIES
    from dataclasses import asdict

    write_model_card(tmp_path / "run", asdict(load_train_config(cfg).resolved(FAMILIES["sd"])), metrics={}, counts={},
                     family=FAMILIES["sd"])
    assert target.read_text() == "theirs" and not card.is_symlink() and "Diffusion-KTO" in card.read_text()


# --- interruptions: a cut manifest or metrics line -------------------------------------------------


def test_a_malformed_manifest_falls_back_to_the_previous_checkpoint(tiny_sd_path, records, tmp_path, capsys):
    cfg = short(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 6}, checkpoint={"every": 2, "keep": 0})
    trainer = Trainer(cfg)
    trainer.fit(stop_at=4)
    trainer.close()
    manifest = tmp_path / "run" / "checkpoints" / "checkpoint-0000004" / "manifest.json"
    good = manifest.read_text()
    for bad in ("{}", "[]", good.replace('"step": 4', '"step": "4"'), good[: len(good) // 2]):
        manifest.write_text(bad)  # a kill while it was written left {} (KeyError: 'step' before)
        capsys.readouterr()
        resumed = Trainer(cfg, overrides=["checkpoint.resume=latest"])
        assert resumed.global_step == 2
        err = capsys.readouterr().err
        assert f"{manifest.parent} has no complete manifest.json" in err and "checkpoint-0000002 instead" in err
        resumed.close()


def test_a_cut_last_metrics_line_is_dropped_on_resume_saying_so(tiny_sd_path, records, tmp_path, capsys):
    cfg = short(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 4}, checkpoint={"every": 2})
    trainer = Trainer(cfg)
    trainer.fit(stop_at=3)
    trainer.close()
    jsonl, csv_file = tmp_path / "run" / "metrics.jsonl", tmp_path / "run" / "metrics.csv"
    jsonl.write_text(jsonl.read_text()[:-25])  # killed while writing the row of step 3
    csv_file.write_text(csv_file.read_text()[:-25])
    assert [r["step"] for r in read_metrics(jsonl)] == [1, 2]
    capsys.readouterr()
    result = Trainer(cfg, overrides=["checkpoint.resume=latest"]).fit()  # JSONDecodeError before
    err = capsys.readouterr().err
    assert f"dropped the last line of {jsonl}, cut short" in err  # the CSV is rebuilt from the JSONL
    assert [r["step"] for r in read_metrics(result.metrics_path)] == [1, 2, 3, 4]
    assert [line.split(",")[0] for line in csv_file.read_text().splitlines()[1:]] == ["1", "2", "3", "4"]


# --- a finished run keeps its last checkpoint: "train 1,000 more steps" -------------------------


@pytest.mark.parametrize("lora", [False, True])
def test_a_finished_run_is_extended_by_more_steps_as_one_run_of_that_length(tiny_sd_path, records, tmp_path, lora, capsys):
    from safetensors.torch import load_file

    lora_cfg = {"enabled": True, "rank": 4} if lora else {"enabled": False}
    whole = Trainer(short(tiny_sd_path, records, tmp_path / "six", optim={"max_steps": 6}, checkpoint={"every": 4},
                          lora=lora_cfg)).fit()
    cfg = short(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 4}, checkpoint={"every": 4}, lora=lora_cfg)
    first = Trainer(cfg).fit()
    last = tmp_path / "run" / "checkpoints" / "checkpoint-0000004"  # the last step is checkpointed
    weights = Path(first.weights) / "diffusion_pytorch_model.safetensors" if not lora else Path(first.weights)
    in_checkpoint = last / weights.relative_to(tmp_path / "run")
    assert os.path.samefile(weights, in_checkpoint)  # the final weights are the checkpoint's files, not a copy
    capsys.readouterr()
    again = Trainer(cfg, overrides=["checkpoint.resume=latest"]).fit()  # the same max_steps: nothing to train
    assert again.global_step == 4 and "finished at step 4 (optim.max_steps): nothing to train" in capsys.readouterr().err

    more = Trainer(cfg, overrides=["checkpoint.resume=latest", "optim.max_steps=6"])
    assert more.global_step == 4
    extended = more.fit()
    rows, ref = read_metrics(extended.metrics_path), read_metrics(whole.metrics_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and [r["loss"] for r in rows] == [r["loss"] for r in ref]
    final = Path(extended.weights) / "diffusion_pytorch_model.safetensors" if not lora else Path(extended.weights)
    mine, theirs = load_file(str(final)), load_file(str(Path(whole.weights) / final.relative_to(extended.weights))
                                                    if not lora else whole.weights)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("lora", [False, True])
def test_disk_full_while_writing_the_final_weights_is_one_line_and_leaves_nothing_that_looks_finished(
        tiny_sd_path, records, tmp_path, monkeypatch, lora, capsys):
    import safetensors.torch

    from kto_lab.cli import main
    from kto_lab.sd.checkpoints import CheckpointError

    real_save = safetensors.torch.save_file

    def full_disk(tensors, filename, *a, **k):
        if "checkpoint" not in str(filename):  # the final weights, not a checkpoint
            Path(filename).write_bytes(b"half a file")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "run"
    tiny_kto = Path(__file__).resolve().parents[1] / "kto_lab" / "configs" / "tiny_kto.yaml"
    argv = ["train", "--config", str(tiny_kto), f"model.pretrained={tiny_sd_path}", f"data.train=[{records}]",
            f"output_dir={out}", "optim.max_steps=2", "checkpoint.every=0", f"lora.enabled={str(lora).lower()}"]
    assert main(argv) == 2  # no checkpoint of the last step (every=0): the weights are written fresh
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("kto-lab train: error: no space left on device while writing") and ".tmp-" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.csv", "metrics.jsonl", "run_files.json"]

    monkeypatch.setattr(safetensors.torch, "save_file", real_save)  # with a checkpoint: linked from it
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    cfg = short(tiny_sd_path, records, out, optim={"max_steps": 2}, checkpoint={"every": 2}, lora={"enabled": lora})
    with pytest.raises(CheckpointError, match=r"no space left on device while writing .*\.tmp-.* \(removed it\); the "
                                              r"last complete checkpoint is .*checkpoint-0000002") as err:
        Trainer(cfg, overwrite=True).fit()
    assert "\n" not in str(err.value) and not (out / "run.lock").exists()
    assert not any(p.name.startswith(".tmp-") or p.name in ("unet", "pytorch_lora_weights.safetensors")
                   for p in out.iterdir())


# --- Ctrl-C and SIGTERM ------------------------------------------------------------------------------


def _tiny_argv(tiny_sd_path, records, out, *extra):
    tiny_kto = Path(__file__).resolve().parents[1] / "kto_lab" / "configs" / "tiny_kto.yaml"
    return ["train", "--config", str(tiny_kto), f"model.pretrained={tiny_sd_path}", f"data.train=[{records}]",
            f"output_dir={out}", "logging.progress_bar=false", *extra]


def test_ctrl_c_stops_in_one_line_naming_the_last_checkpoint(tiny_sd_path, records, tmp_path, monkeypatch, capsys):
    from kto_lab.cli import main

    real_step = Trainer.step

    def interrupted_at_step_3(self, batch):
        if self.global_step == 3:
            raise KeyboardInterrupt  # what Ctrl-C raises, wherever the run is
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "step", interrupted_at_step_3)
    out = tmp_path / "run"
    assert main(_tiny_argv(tiny_sd_path, records, out, "optim.max_steps=6", "checkpoint.every=2")) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1] == (
        f"kto-lab train: interrupted: stopped by Ctrl-C at step 3; last checkpoint: {out / 'checkpoints' / 'checkpoint-0000002'} "
        f"(resume with checkpoint.resume=latest)")
    assert not (out / "run.lock").exists()


def test_sigterm_writes_a_checkpoint_that_fits_releases_the_lock_and_says_so(tiny_sd_path, records, tmp_path):
    """A real process receiving SIGTERM (what schedulers send) mid-run."""
    import signal
    import time

    out = tmp_path / "run"
    argv = _tiny_argv(tiny_sd_path, records, out, "optim.max_steps=100000", "checkpoint.every=1000", "logging.log_every=1")
    proc = subprocess.Popen([sys.executable, "-m", "kto_lab.cli", *argv], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not ((out / "metrics.jsonl").is_file() and len(read_metrics(out)) >= 2) and time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    step = read_metrics(out)[-1]["step"]  # the step it finished after the signal
    checkpoint = out / "checkpoints" / f"checkpoint-{step:07d}"
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"kto-lab train: interrupted: stopped by SIGTERM after step {step}; last checkpoint: {checkpoint} "
        f"(resume with checkpoint.resume=latest)")
    assert not (out / "run.lock").exists()
    from kto_lab.sd.checkpoints import problem

    assert problem(checkpoint) is None  # a tiny checkpoint fits the budget: written before stopping
    from kto_lab.sd.config import load_train_config

    assert Trainer(load_train_config(argv[2], argv[3:] + ["checkpoint.resume=latest"])).global_step == step


def test_sigterm_skips_a_checkpoint_that_would_not_fit(tiny_sd_path, records, tmp_path, monkeypatch):
    import signal

    import kto_lab.sd.trainer as T
    from kto_lab.sd.interrupts import TrainingInterrupted

    real_step = Trainer.step

    def signalled_in_step_3(self, batch):
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled after this step
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "step", signalled_in_step_3)
    monkeypatch.setattr(T, "SAVE_BUDGET_S", 0.0)  # no write fits
    trainer = Trainer(short(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 6}, checkpoint={"every": 2}))
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM after step 3; last checkpoint: .*checkpoint-0000002"):
        trainer.fit()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint-0000002"]
    assert not (tmp_path / "run" / "run.lock").exists() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_push_uploads_an_allow_list_shown_first_and_refuses_secrets(tmp_path, monkeypatch, capsys):
    """issue 21, 4c: a .env (with a token) and a records.csv left in a run directory were uploaded."""
    import huggingface_hub

    from kto_lab.cli import main

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    run = finished_run(tmp_path)
    (run / ".env").write_text("HF_TOKEN=hf_" + "a" * 34 + "\n")
    (run / "records.csv").write_text("image,caption,label\n")
    for name in ("checkpoints/checkpoint-0000010/optimizer.bin", "logs/events.out", "validation/step-0000010/00.png",
                 "validation/step-0000005/00.png", "run.lock"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"x")
    wanted = ["README.md", "config.yaml", "metrics.jsonl", "pytorch_lora_weights.safetensors",
              "validation/step-0000010/00.png"]  # the last validation images: the card shows them
    assert main(["push", str(run), "me/m", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would upload 5 files") and "6 other files in" in out and not FakeHub.calls
    assert [line.split()[0] for line in out.splitlines()[1:]] == wanted
    assert main(["push", str(run), "me/m"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("uploading 5 files") and out.index("uploading") < out.index("pushed")  # listed first
    assert sorted(FakeHub.calls[-1][2]) == wanted
    n = len(FakeHub.calls)
    assert main(["push", str(run), "me/m", "--include", ".env"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"kto-lab push: error: .*/run/\.env would be uploaded but its name looks like a secret's; "
                        r"remove it from the run \(or from --include\), or pass --allow-secrets if it is not one", err)
    (run / "notes.txt").write_text("my key: hf_" + "b" * 34 + "\n")
    assert main(["push", str(run), "me/m", "--include", "*.txt"]) == 2
    assert "notes.txt would be uploaded but it holds what looks like a token (hf_bbb...)" in capsys.readouterr().err
    assert len(FakeHub.calls) == n  # nothing was sent
    assert main(["push", str(run), "me/m", "--include", "records.csv", "--include", "*.txt", "--allow-secrets"]) == 0
    assert {"records.csv", "notes.txt"} <= set(FakeHub.calls[-1][2])


def test_push_without_network_is_one_line_and_changes_nothing(tmp_path, monkeypatch, capsys):
    """issue 21, 10: a 73-line traceback, after rewriting the local README.md to point at the remote repo."""
    from kto_lab.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    run = finished_run(tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["push", str(run), "me/kto-model", "--token", "hf_" + "c" * 34]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"kto-lab push: error: push to 'me/kto-model' failed \(OfflineModeIsEnabled: .*\); "
                        r".*/run is unchanged", err), err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_bug_in_push_keeps_its_traceback(tmp_path, monkeypatch):
    import huggingface_hub

    from kto_lab.cli import main

    class Broken(FakeHub):
        def create_commit(self, *a, **k):
            raise KeyError("internal")

    monkeypatch.setattr(huggingface_hub, "HfApi", Broken)
    with pytest.raises(KeyError, match="internal"):
        main(["push", str(finished_run(tmp_path)), "me/m"])
