"""The SD trainer end to end on the tiny model (CPU): every objective, resume, LoRA/UNet export,
cache, NaN stop, metrics and validation images."""

import math

import pytest
import torch

from kto_lab.sd.metrics_log import read_metrics
from kto_lab.sd.trainer import Trainer, TrainingDiverged
from sd_helpers import write_pairs, write_records


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


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs"))


def test_kto_full_resume_equals_uninterrupted_run(tiny_sd_path, records, tmp_path):
    full = Trainer(config(tiny_sd_path, records, tmp_path / "a")).fit()
    losses = [r["loss"] for r in read_metrics(full.metrics_path)]
    assert [r["step"] for r in read_metrics(full.metrics_path)] == [1, 2, 3, 4]
    assert len(set(losses)) > 1  # the run is not trivial

    cfg_b = config(tiny_sd_path, records, tmp_path / "b")
    first = Trainer(cfg_b).fit(stop_at=3)  # checkpoint at step 2, then "crash" after step 3
    assert first.global_step == 3 and first.weights is None
    resumed = Trainer(cfg_b, overrides=["checkpoint.resume=latest"])
    assert resumed.global_step == 2
    result = resumed.fit()
    rows = read_metrics(result.metrics_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == losses
    assert [r["z_ref"] for r in rows] == [r["z_ref"] for r in read_metrics(full.metrics_path)]

    # the final UNet (diffusers format) equals across the two runs and loads with from_pretrained
    from diffusers import UNet2DConditionModel

    ua = UNet2DConditionModel.from_pretrained(full.weights)
    ub = UNet2DConditionModel.from_pretrained(result.weights)
    for (n, pa), pb in zip(ua.state_dict().items(), ub.state_dict().values()):
        assert torch.equal(pa, pb), n
    base = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet")
    assert any(not torch.equal(pa, pb) for pa, pb in zip(ua.parameters(), base.parameters()))

    # metrics: the promised columns
    row = rows[-1]
    for key in ("loss", "rewards/desirable", "rewards/accuracy", "z_ref", "lr", "grad_norm"):
        assert key in row and math.isfinite(row[key]), key
    header = (tmp_path / "b" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"rewards/margin", "rewards/undesirable", "z_ref", "grad_norm", "lr"} <= set(header)
    assert (tmp_path / "b" / "config.yaml").is_file()
    assert len(list((tmp_path / "b" / "checkpoints").glob("checkpoint-*"))) == 1  # keep=1


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


def test_lora_dpo_weights_load_into_a_pipeline(tiny_sd_path, pairs, tmp_path):
    from kto_lab.sd.models import load_pipeline

    cfg = config(tiny_sd_path, pairs, tmp_path / "dpo", objective={"objective": "dpo", "beta": 50.0},
                 lora={"enabled": True, "rank": 4}, optim={"max_steps": 3, "batch_size": 2, "learning_rate": 3e-2},
                 logging={"log_every": 1, "progress_bar": False, "validation_prompts": ["a red square"],
                          "validation_every": 3, "validation_inference_steps": 2},
                 checkpoint={"every": 0})
    result = Trainer(cfg).fit()
    assert result.weights.endswith("pytorch_lora_weights.safetensors")
    rows = read_metrics(result.metrics_path)
    assert "rewards/pair_accuracy" in rows[-1] and all(math.isfinite(r["loss"]) for r in rows)
    assert (tmp_path / "dpo" / "validation" / "step-0000003" / "00.png").is_file()

    pipe = load_pipeline(tiny_sd_path)
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    h = torch.randn(1, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
    before = pipe.unet(x, t, h).sample
    pipe.load_lora_weights(str(tmp_path / "dpo"))  # diffusers' own loader accepts the file
    after = pipe.unet(x, t, h).sample
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("objective, extra", [
    ("sft", {}),
    ("csft", {"optim": {"max_steps": 2, "gradient_accumulation_steps": 2}}),
    ("bce", {"model": {"gradient_checkpointing": True}}),
])
def test_reference_free_objectives_train(tiny_sd_path, records, tmp_path, objective, extra):
    cfg = config(tiny_sd_path, records, tmp_path / objective, objective={"objective": objective},
                 optim={"max_steps": 2}, checkpoint={"every": 0})
    for name, values in extra.items():
        cfg[name] = {**cfg[name], **values}
    trainer = Trainer(cfg)
    assert trainer.reference is None and trainer.reference_unet is None  # no reference model is built
    micro = []
    trainer.step = (lambda step: lambda batch: micro.append(1) or step(batch))(trainer.step)
    result = trainer.fit()
    assert result.global_step == 2 and all(math.isfinite(r["loss"]) for r in read_metrics(result.metrics_path))
    assert len(micro) == 2 * cfg["optim"].get("gradient_accumulation_steps", 1)  # optimizer steps, not micro-batches


def test_lora_frozen_copy_reference_equals_disabled_adapters(tiny_sd_path, records, tmp_path):
    """Both LoRA references give the same first-step losses (the adapters start at zero)."""
    runs = {}
    for ref in ("disabled_adapters", "frozen_copy"):
        cfg = config(tiny_sd_path, records, tmp_path / ref, lora={"enabled": True, "rank": 4, "reference": ref},
                     optim={"max_steps": 1}, checkpoint={"every": 0})
        trainer = Trainer(cfg)
        assert (trainer.reference_unet is not None) == (ref == "frozen_copy")
        runs[ref] = trainer.fit().last_metrics
    assert runs["disabled_adapters"]["loss"] == pytest.approx(runs["frozen_copy"]["loss"], abs=1e-6)
    assert runs["disabled_adapters"]["err/reference"] == pytest.approx(runs["frozen_copy"]["err/reference"], rel=1e-5)


def test_cache_build_and_train_from_it(tiny_sd_path, records, tmp_path):
    from kto_lab.sd.cache import read_manifest, sample_latents
    from kto_lab.sd.components import load_components
    from kto_lab.sd.config import load_train_config
    from kto_lab.sd.encoding import encode_images

    cache = tmp_path / "cache"
    cfg = config(tiny_sd_path, records, tmp_path / "run", data={"cache_dir": str(cache), "cache_shard_size": 4},
                 optim={"max_steps": 2}, checkpoint={"every": 0})
    result = Trainer(cfg).fit()
    assert result.global_step == 2
    manifest = read_manifest(cache)
    assert manifest["count"] == 6 and len(manifest["shards"]) == 2 and manifest["kind"] == "records"

    # a second run (its own output_dir) reads the cache only: no VAE or text encoder is loaded
    again = Trainer({**cfg, "output_dir": str(tmp_path / "run_again")})
    assert again.components.vae is None and again.components.text_encoder is None
    batch = again.source.next_batch()
    assert set(batch) == {"latent_moments", "encoder_hidden_states", "labels"}
    again.step(batch)

    # cached moments give the latents the VAE gives (mode), up to the fp16 storage
    from kto_lab.data.records import load_records
    from kto_lab.sd.data import ImageTransform
    from safetensors.torch import load_file

    comps = load_components(load_train_config(cfg).model)
    shard = load_file(str(cache / manifest["shards"][0]["file"]))
    img = ImageTransform(32)(load_records(records).load_image(int(shard["index"][0])), torch.Generator())
    direct = encode_images(comps.vae, img[None], mode="mode")
    cached = sample_latents(shard["latent_moments"][:1], manifest["scaling_factor"], mode="mode")
    assert torch.allclose(direct, cached, atol=2e-2)

    # a cache made for another resolution is refused with a clear message
    from kto_lab.config import ConfigError

    with pytest.raises(ConfigError, match="resolution"):
        Trainer(config(tiny_sd_path, records, tmp_path / "run2", data={"cache_dir": str(cache), "resolution": 16}))


def test_nan_loss_stops_and_last_checkpoint_stays_usable(tiny_sd_path, records, tmp_path):
    cfg = config(tiny_sd_path, records, tmp_path / "nan", optim={"max_steps": 6})
    trainer = Trainer(cfg)
    trainer.fit(stop_at=2)  # checkpoint-0000002
    with torch.no_grad():
        next(trainer.unet.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="checkpoint-0000002"):
        trainer.fit()
    assert trainer.global_step == 2
    resumed = Trainer(cfg, overrides=["checkpoint.resume=latest"])
    assert resumed.global_step == 2
    assert all(torch.isfinite(p).all() for p in resumed.unet.parameters())
    assert resumed.fit(stop_at=3).global_step == 3


def test_step_takes_ready_latents_and_embeddings(tiny_sd_path, records, tmp_path):
    """The benchmark path: a Trainer over given components, batches of tensors only."""
    from kto_lab.sd.components import Components, load_components
    from kto_lab.sd.config import load_train_config

    cfg = config(tiny_sd_path, records, tmp_path / "bench", optim={"max_steps": 10})
    full = load_components(load_train_config(cfg).model)
    comps = Components(unet=full.unet, schedule=full.schedule)
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
