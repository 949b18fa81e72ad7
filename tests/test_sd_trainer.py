"""The SD trainer's own mechanics on the tiny SD 1.5 (CPU): a one-sample batch's unrelated captions, the NaN stop,
ready latents and embeddings, the VAE's precision. What every model family must pass (every objective, exact
resume, LoRA and full exports, cache, references, 2-process runs, evaluation) is in tests/test_families.py."""

import math

import pytest
import torch

from kto_lab.sd.metrics_log import read_metrics
from kto_lab.sd.trainer import Trainer, TrainingDiverged
from sd_helpers import write_records


def config(tiny_sd_path, table, out, **sections):
    cfg = {
        "output_dir": str(out), "cpu": True, "seed": 0,
        "model": {"pretrained": str(tiny_sd_path)},
        "data": {"train": [str(table)], "resolution": 32},
        "objective": {"objective": "kto", "beta": 20.0},
        "optim": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1},
        "logging": {"log_every": 1, "progress_bar": False},
        "checkpoint": {"every": 2, "keep": 1},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    return cfg


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("records"))


def test_batch_of_one_pairs_with_the_previous_micro_batch_and_resumes_exactly(tiny_sd_path, records, tmp_path,
                                                                            monkeypatch):
    """Per-device batch 1 with gradient accumulation: each micro-batch's unrelated captions (sec. 4.1) are
    the previous micro-batch's (rolling a batch of one would give its own), and an interrupted run
    resumes bit for bit (those captions are in the checkpoint)."""
    import kto_lab.sd.trainer as T

    calls, real = [], T.objective_step

    def spy(*args, **kwargs):
        calls.append((args[5].clone(), kwargs["cond_unrelated"].clone()))
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "objective_step", spy)
    one = {"optim": {"batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": 4}}
    full = Trainer(config(tiny_sd_path, records, tmp_path / "a", **one)).fit()
    assert len(calls) == 8
    for (_, unrelated), (previous, _) in zip(calls[1:], calls[:-1]):
        assert torch.equal(unrelated, previous)

    cfg_b = config(tiny_sd_path, records, tmp_path / "b", **one)
    Trainer(cfg_b).fit(stop_at=3)
    result = Trainer(cfg_b, overrides=["checkpoint.resume=latest"]).fit()
    assert [(r["loss"], r["z_ref"]) for r in read_metrics(result.metrics_path)] == \
        [(r["loss"], r["z_ref"]) for r in read_metrics(full.metrics_path)]


def test_nan_loss_stops_and_last_checkpoint_stays_usable(tiny_sd_path, records, tmp_path):
    cfg = config(tiny_sd_path, records, tmp_path / "nan", optim={"max_steps": 6})
    trainer = Trainer(cfg)
    trainer.fit(stop_at=2)  # checkpoint-0000002
    with torch.no_grad():
        next(trainer.denoiser.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="checkpoint-0000002"):
        trainer.fit()
    assert trainer.global_step == 2
    resumed = Trainer(cfg, overrides=["checkpoint.resume=latest"])
    assert resumed.global_step == 2
    assert all(torch.isfinite(p).all() for p in resumed.denoiser.parameters())
    assert resumed.fit(stop_at=3).global_step == 3


def test_step_takes_ready_latents_and_embeddings(tiny_sd_path, records, tmp_path):
    """The benchmark path: a Trainer over given components, batches of tensors only."""
    from kto_lab.sd.components import Components, load_components
    from kto_lab.sd.config import load_train_config

    cfg = config(tiny_sd_path, records, tmp_path / "bench", optim={"max_steps": 10})
    full = load_components(load_train_config(cfg).model)
    comps = Components(denoiser=full.denoiser, schedule=full.schedule)
    trainer = Trainer(cfg, components=comps, source=object())
    batch = {"latents": torch.randn(4, 4, 16, 16), "encoder_hidden_states": torch.randn(4, 16, 32),
             "labels": torch.tensor([1, 1, 0, 1])}
    m = trainer.step(batch)
    assert trainer.global_step == 1 and math.isfinite(m["loss"]) and "z_ref" in m
    # the step leaves its metrics on the device (no host copy per step); the log step converts them
    assert all(isinstance(v, torch.Tensor) and v.device == trainer.device for v in m.values())


def test_vae_encodes_in_fp32_and_the_cache_keeps_fp32_under_mixed_precision(tiny_sd_path, records, tmp_path):
    """The official KTO script encodes with an fp32 VAE; so do the trainer and its cache by default. Options:
    model.vae_dtype=auto (the mixed-precision dtype) and data.cache_dtype=fp16 (half the disk)."""
    from safetensors.torch import load_file

    from kto_lab.sd.cache import read_manifest

    def build(name, **sections):
        cache = tmp_path / f"cache_{name}"
        cfg = config(tiny_sd_path, records, tmp_path / name, optim={"max_steps": 1, "mixed_precision": "bf16"},
                     checkpoint={"every": 0})
        for section, values in sections.items():
            cfg[section] = {**cfg[section], **values}
        cfg["data"]["cache_dir"] = str(cache)
        trainer = Trainer(cfg)
        shard = load_file(str(cache / read_manifest(cache)["shards"][0]["file"]))
        return trainer, shard, read_manifest(cache)

    trainer, shard, manifest = build("default")
    assert trainer.components.vae.dtype == torch.float32
    assert trainer.components.text_encoder.dtype == torch.bfloat16
    assert shard["latent_moments"].dtype == torch.float32 and manifest["dtype"] == "float32"
    assert manifest["vae_dtype"] == "fp32"

    trainer, shard, manifest = build("auto_fp16", model={"vae_dtype": "auto"}, data={"cache_dtype": "fp16"})
    assert trainer.components.vae.dtype == torch.bfloat16
    assert shard["latent_moments"].dtype == torch.float16 and manifest["dtype"] == "float16"
