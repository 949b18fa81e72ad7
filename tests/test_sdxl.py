"""SDXL as a model family (kto_lab.sd.families) on the tiny random SDXL (CPU): its conditioning equals
diffusers' pipeline, every objective trains through the shared step, exact resume, LoRA and UNet exports
load in diffusers, the cache round-trips every conditioning tensor, 2-process z_ref, SPIN, evaluation,
and the one-line errors for inputs of the wrong family."""

import json
import math

import pytest
import torch

from kto_lab.config import ConfigError
from kto_lab.sd.families import FAMILIES, resolve_family
from kto_lab.sd.metrics_log import read_metrics
from kto_lab.sd.trainer import Trainer
from family_checks import check_exact_resume
from family_checks import short_config as config
from test_sd_trainer import pairs, records  # noqa: F401  (module fixtures: the same small tables)

SDXL = FAMILIES["sdxl"]


@pytest.fixture(scope="module")
def lora_run(tiny_sdxl_path, pairs, tmp_path_factory):
    """A LoRA DPO run on SDXL with validation images (shared by the loading tests)."""
    out = tmp_path_factory.mktemp("sdxl_lora")
    cfg = config(tiny_sdxl_path, pairs, out, objective={"objective": "dpo", "beta": 50.0},
                 lora={"enabled": True, "rank": 4}, optim={"max_steps": 2, "batch_size": 2, "learning_rate": 3e-2},
                 logging={"log_every": 1, "progress_bar": False, "validation_prompts": ["a red square"],
                          "validation_every": 2, "validation_inference_steps": 2})
    return Trainer(cfg).fit()


# --- the family: detection and conditioning -------------------------------------------------------


def test_family_is_read_from_model_index(tiny_sd_path, tiny_sdxl_path, tmp_path):
    assert resolve_family(tiny_sd_path).name == "sd" and resolve_family(tiny_sdxl_path).name == "sdxl"
    assert resolve_family(tiny_sdxl_path, "sdxl") is SDXL
    with pytest.raises(ConfigError, match="model.family=sd but .* StableDiffusionXLPipeline"):
        resolve_family(tiny_sdxl_path, "sd")
    from kto_lab.eval.run import EvalConfig, ModelSpec

    for name in ("FluxPipeline", "PixArtAlphaPipeline"):  # unsupported families: named, before any load
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(json.dumps({"_class_name": name}))
        with pytest.raises(ConfigError, match=f"is a {name} pipeline.*supported families: sd .*sdxl"):
            Trainer({"model": {"pretrained": str(tmp_path / name)}, "data": {"train": [__file__]}})
        evaluation = EvalConfig(prompts="p.txt", models=[ModelSpec("base", str(tiny_sd_path)),
                                                         ModelSpec("other", str(tmp_path / name))])
        with pytest.raises(ConfigError, match=rf"models\[1\]\.pipeline=.* is a {name} pipeline"):
            evaluation.validate()


def test_conditioning_is_what_the_sdxl_pipeline_computes(tiny_sdxl_path):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    captions = ["a red square", "a blue circle on a green background"]
    text = SDXL.encode_captions(pipe, captions)
    embeds, _, pooled, _ = pipe.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(text["encoder_hidden_states"], embeds) and torch.equal(text["text_embeds"], pooled)
    geometry = {"original_size": torch.tensor([[40, 48], [300, 200]]), "crop_top_left": torch.tensor([[0, 4], [7, 0]])}
    cond = SDXL.cond(text, geometry, 32)
    for i in range(2):
        expected = pipe._get_add_time_ids(tuple(geometry["original_size"][i].tolist()),
                                          tuple(geometry["crop_top_left"][i].tolist()), (32, 32), torch.float32,
                                          text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        assert torch.equal(cond["time_ids"][i:i + 1], expected)
    # the family's denoiser calls the UNet with the added conditions, as the pipeline does
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 900])
    direct = pipe.unet(x, t, encoder_hidden_states=embeds,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": cond["time_ids"]}).sample
    assert torch.equal(SDXL.denoiser(pipe.unet)(x, t, cond), direct)


def test_vae_precision_rule_and_shipped_configs(tiny_sdxl_path):
    """model.vae_dtype=auto: the mixed-precision dtype, except fp16 for a VAE that asks to be upcast (SDXL's
    own; the SDXL pipeline's rule); the shipped SDXL configs load and name the family's resolution."""
    from pathlib import Path

    from diffusers import AutoencoderKL

    from kto_lab.sd.config import load_train_config

    vae = AutoencoderKL.from_pretrained(tiny_sdxl_path, subfolder="vae")
    assert vae.config.force_upcast
    assert SDXL.vae_dtype(vae, torch.float16) == torch.float32 and SDXL.vae_dtype(vae, torch.bfloat16) == torch.bfloat16
    assert FAMILIES["sd"].vae_dtype(vae, torch.float16) == torch.float16
    configs = Path(__file__).resolve().parents[1] / "kto_lab" / "configs"
    for name in ("sdxl_kto_lora.yaml", "sdxl_kto_full.yaml"):
        cfg = load_train_config(configs / name)
        assert cfg.data.resolution == 1024 and cfg.model.gradient_checkpointing and cfg.data.caption_dropout == 0.2


def test_crop_geometry_is_recorded(tmp_path):
    import numpy as np
    from PIL import Image

    from kto_lab.sd.data import crop_image

    image = Image.fromarray(np.zeros((40, 80, 3), np.uint8))  # h 40, w 80 -> resized to 16 x 32
    c = crop_image(image, 16)
    assert c.original_size == (40, 80) and c.crop_top_left == (0, 8)
    g = torch.Generator().manual_seed(0)
    r = crop_image(image, 16, center_crop=False, generator=g)
    flipped = crop_image(image, 16, center_crop=False, flip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flipped.pixels, r.pixels.flip(-1))
    assert flipped.crop_top_left == (0, 32 - 16 - r.crop_top_left[1])  # the window, seen in the mirrored image


# --- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective, extra", [
    ("kto", {"objective": {"utility": "kto"}}),
    ("kto", {"objective": {"utility": "loss_averse"}, "lora": {"enabled": True, "rank": 4}}),
    ("kto", {"objective": {"utility": "risk_seeking"}, "lora": {"enabled": True, "rank": 4, "reference": "frozen_copy"}}),
    ("sft", {"model": {"gradient_checkpointing": True}}),
    ("csft", {"data": {"caption_dropout": 0.5}}),
    ("bce", {"optim": {"optimizer": "adafactor"}}),
    ("dpo", {}),
])
def test_every_objective_trains_on_sdxl(tiny_sdxl_path, records, pairs, tmp_path, objective, extra):
    cfg = config(tiny_sdxl_path, pairs if objective == "dpo" else records, tmp_path / objective,
                 objective={"objective": objective, "beta": 20.0})
    for name, values in extra.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    trainer = Trainer(cfg)
    assert trainer.family is SDXL
    result = trainer.fit()
    rows = read_metrics(result.metrics_path)
    assert result.global_step == 2 and all(math.isfinite(r["loss"]) for r in rows)
    if objective == "kto":
        assert "z_ref" in rows[-1]
    if objective == "dpo":  # the losers get their own size/crop time ids
        batch = trainer.source.next_batch()
        assert {"original_size_l", "crop_top_left_l", "input_ids_2"} <= set(batch)


def test_sdxl_defaults_to_1024_and_checks_resolution(tiny_sdxl_path, records, tmp_path):
    cfg = config(tiny_sdxl_path, records, tmp_path / "r")
    del cfg["data"]["resolution"]
    assert Trainer(cfg).cfg.data.resolution == 1024  # SDXL's own resolution (built, not stepped)
    with pytest.raises(ConfigError, match="data.resolution=1020 must be a multiple of 8 .the VAE.s down-sampling"):
        Trainer(config(tiny_sdxl_path, records, tmp_path / "r2", data={"resolution": 1020}))


def test_exact_resume_on_sdxl(tiny_sdxl_path, records, tmp_path):
    """LoRA KTO with caption dropout: the interrupted and resumed run equals the uninterrupted one."""
    def cfg(out):
        return config(tiny_sdxl_path, records, out, lora={"enabled": True, "rank": 4},
                      data={"caption_dropout": 0.3, "center_crop": False}, optim={"max_steps": 4, "learning_rate": 3e-2},
                      checkpoint={"every": 2, "keep": 1})

    full, result = check_exact_resume(cfg, tmp_path)

    from safetensors.torch import load_file

    wa, wb = load_file(full.weights), load_file(result.weights)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lora_loads_in_diffusers_sdxl_pipeline_and_generates(tiny_sdxl_path, lora_run):
    from diffusers import StableDiffusionXLPipeline
    from family_checks import check_lora_loads_and_changes_images

    check_lora_loads_and_changes_images(StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path), lora_run)


def test_full_fine_tune_unet_loads_with_from_pretrained(tiny_sdxl_path, records, tmp_path):
    from diffusers import UNet2DConditionModel

    result = Trainer(config(tiny_sdxl_path, records, tmp_path / "full")).fit()
    unet = UNet2DConditionModel.from_pretrained(result.weights)
    assert unet.config.addition_embed_type == "text_time"


def test_wrong_family_lora_and_unet_are_one_line_errors(tiny_sd_path, tiny_sdxl_path, records, lora_run, tmp_path):
    from kto_lab.sd.models import load_pipeline

    with pytest.raises(ConfigError, match="does not fit this StableDiffusionPipeline's UNet.*another model family"):
        load_pipeline(tiny_sd_path, lora_path=lora_run.weights)  # an SDXL LoRA into SD 1.5
    sd_lora = Trainer(config(tiny_sd_path, records, tmp_path / "sd", lora={"enabled": True, "rank": 4},
                             optim={"max_steps": 1})).fit()
    with pytest.raises(ConfigError, match="does not fit this StableDiffusionXLPipeline's UNet"):
        load_pipeline(tiny_sdxl_path, lora_path=sd_lora.weights)  # and the reverse
    with pytest.raises(ConfigError, match="is not a sdxl UNet"):
        Trainer(config(tiny_sdxl_path, records, tmp_path / "u", model={"unet": str(tiny_sd_path)}))


# --- cache ----------------------------------------------------------------------------------------


def test_cache_round_trips_every_conditioning_tensor(tiny_sdxl_path, tiny_sd_path, records, tmp_path):
    from safetensors.torch import load_file

    from kto_lab.data.records import load_records
    from kto_lab.sd.cache import EMPTY_CAPTION, read_manifest
    from kto_lab.sd.components import load_components
    from kto_lab.sd.config import load_train_config
    from kto_lab.sd.data import ImageTransform

    cache = tmp_path / "cache"
    cfg = config(tiny_sdxl_path, records, tmp_path / "cached", data={"cache_dir": str(cache), "latent_mode": "mode"})
    cached = Trainer(cfg).fit()
    manifest = read_manifest(cache)
    assert manifest["family"] == "sdxl" and manifest["dtype"] == "float32" and manifest["vae_dtype"] == "fp32"
    shard = load_file(str(cache / manifest["shards"][0]["file"]))
    assert set(shard) == {"latent_moments", "encoder_hidden_states", "text_embeds", "original_size", "crop_top_left",
                          "labels", "index"}

    comps = load_components(load_train_config(cfg).model)
    table = load_records(records)
    i = int(shard["index"][0])
    crop = ImageTransform(32).crop(table.load_image(i), torch.Generator())
    text = SDXL.encode_captions(comps, [table.captions[i]])
    for key in ("encoder_hidden_states", "text_embeds"):
        assert torch.allclose(shard[key][:1], text[key], atol=1e-6), key
    assert shard["original_size"][0].tolist() == list(crop.original_size) == [40, 48]
    assert shard["crop_top_left"][0].tolist() == list(crop.crop_top_left)
    empty = load_file(str(cache / EMPTY_CAPTION))
    assert torch.allclose(empty["text_embeds"], SDXL.encode_captions(comps, [""])["text_embeds"], atol=1e-6)

    # training from the cache equals training from the images (same rows, same draws, fp32 moments)
    direct = Trainer(config(tiny_sdxl_path, records, tmp_path / "direct", data={"latent_mode": "mode"})).fit()
    for a, b in zip(read_metrics(cached.metrics_path), read_metrics(direct.metrics_path)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["z_ref"] == pytest.approx(b["z_ref"], abs=1e-5)

    # caption dropout replaces cached text with the cached empty caption
    dropping = Trainer(config(tiny_sdxl_path, records, tmp_path / "drop",
                              data={"cache_dir": str(cache), "latent_mode": "mode", "caption_dropout": 1.0}))
    batch = dropping.source.next_batch()
    assert torch.equal(batch["text_embeds"], empty["text_embeds"].expand_as(batch["text_embeds"]))

    # a cache of the other family is refused in one line, before training
    with pytest.raises(ConfigError, match="built with family='sdxl', but the config has 'sd'"):
        Trainer(config(tiny_sd_path, records, tmp_path / "sd", data={"cache_dir": str(cache)}))


# --- distributed, SPIN, evaluation ----------------------------------------------------------------


def test_two_process_sdxl_run_agrees_on_z_ref(tiny_sdxl_path, records, tmp_path):
    from family_checks import check_two_process_run

    check_two_process_run(config(tiny_sdxl_path, records, tmp_path / "run", optim={"max_steps": 10, "batch_size": 2}),
                          tmp_path)


def test_spin_iteration_on_sdxl(tiny_sdxl_path, records, tmp_path):
    from diffusers import UNet2DConditionModel

    from kto_lab.spin import spin
    from kto_lab.synthetic.evaluate import make_pipeline, sample

    pipe = make_pipeline(tiny_sdxl_path)
    base_unet = pipe.unet

    def generate(pretrained, unet_dir, captions, seeds):
        pipe.unet = base_unet if unet_dir is None else UNet2DConditionModel.from_pretrained(unet_dir)
        return sample(pipe, captions, seeds, steps=2)

    cfg = config(tiny_sdxl_path, records, tmp_path / "unused", optim={"max_steps": 1, "batch_size": 2})
    its = spin(cfg, records, tmp_path / "spin", generate, iterations=1, pairs_per_iteration=2, seed=0)
    assert len(its) == 1 and all(math.isfinite(v) for v in its[0].last_metrics.values())
    assert UNet2DConditionModel.from_pretrained(its[0].unet).config.addition_embed_type == "text_time"


def test_eval_generate_and_implicit_accuracy_on_sdxl(tiny_sdxl_path, records, lora_run, tmp_path):
    from family_checks import check_eval_generate_and_implicit_accuracy

    check_eval_generate_and_implicit_accuracy(tiny_sdxl_path, records, lora_run.weights, tmp_path)
