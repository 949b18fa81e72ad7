"""Stable Diffusion 3 as a model family (kto_lab.sd.families) on the tiny random SD3 (CPU): its conditioning
equals diffusers' pipeline, latents carry the VAE's shift, every objective trains through the shared step
with the flow-matching schedule, exact resume, LoRA and transformer exports load in diffusers, the cache
round-trips every conditioning tensor, evaluation, and the one-line errors and warnings of bad input."""

import math
import warnings
from pathlib import Path

import pytest
import torch

from kto_lab.config import ConfigError
from kto_lab.schedule import DEFAULT_FLOW_ERROR, FLOW_ERRORS, FlowMatchingSchedule
from kto_lab.sd.families import FAMILIES, resolve_family
from kto_lab.sd.metrics_log import read_metrics
from kto_lab.sd.trainer import Trainer
from family_checks import check_exact_resume, short_config
from test_sd_trainer import config as sd_config
from test_sd_trainer import pairs, records  # noqa: F401  (module fixtures: the same small tables)

SD3 = FAMILIES["sd3"]
SD3_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def config(pretrained, table, out, **sections):
    """The short run config of the family tests, with a beta in SD3's useful range (the tiny model's errors are
    those of a random network: any beta trains it)."""
    objective = {"beta": SD3.beta_range[DEFAULT_FLOW_ERROR][0], **sections.pop("objective", {})}
    return short_config(pretrained, table, out, objective=objective, **sections)


@pytest.fixture(scope="module")
def lora_run(tiny_sd3_path, pairs, tmp_path_factory):
    """A LoRA DPO run on SD3 (diffusers' SD3 LoRA targets) with validation images (shared by the loading tests)."""
    out = tmp_path_factory.mktemp("sd3_lora")
    cfg = config(tiny_sd3_path, pairs, out, objective={"objective": "dpo"},
                 lora={"enabled": True, "rank": 4, "target_modules": SD3_LORA_TARGETS},
                 optim={"max_steps": 2, "batch_size": 2, "learning_rate": 3e-2},
                 logging={"log_every": 1, "progress_bar": False, "validation_prompts": ["a red square"],
                          "validation_every": 2, "validation_inference_steps": 2})
    return Trainer(cfg).fit()


# --- the family: detection, conditioning, latents, schedule -------------------------------------------------------


def test_family_is_read_from_model_index(tiny_sd3_path):
    assert resolve_family(tiny_sd3_path) is SD3 and resolve_family(tiny_sd3_path, "sd3") is SD3
    with pytest.raises(ConfigError, match="model.family=sdxl but .* StableDiffusion3Pipeline pipeline .family sd3"):
        resolve_family(tiny_sd3_path, "sdxl")


def test_conditioning_is_what_the_sd3_pipeline_computes(tiny_sd3_path):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_path)
    captions = ["a red square", "a blue circle on a green background"]
    text = SD3.encode_captions(pipe, captions)
    with torch.no_grad():  # as the pipeline's __call__ (T5's attention rounds differently with autograd on)
        embeds, _, pooled, _ = pipe.encode_prompt(captions, None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=77)  # diffusers' SD3 training scripts' T5 length
    assert embeds.shape == (2, 16 + 77, 64)  # CLIP tokens then T5 tokens, T5's width
    assert torch.equal(text["encoder_hidden_states"], embeds) and torch.equal(text["pooled_projections"], pooled)
    cond = SD3.cond(text, {}, 32)
    assert set(cond) == {"encoder_hidden_states", "pooled_projections"}
    # the family's denoiser calls the transformer as the pipeline does (timesteps in its 0..1000 units)
    x, t = torch.randn(2, 16, 16, 16), torch.tensor([10.0, 900.0])
    with torch.no_grad():
        direct = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=embeds,
                                  pooled_projections=pooled).sample
        assert torch.equal(SD3.denoiser(pipe.transformer)(x, t, cond), direct)


def test_latents_apply_the_vae_shift_and_scale(tiny_sd3_path):
    """SD3's VAE latents are (z - shift_factor) * scaling_factor, on the fly and from cached moments alike."""
    from diffusers import AutoencoderKL

    from kto_lab.sd.cache import sample_latents
    from kto_lab.sd.encoding import encode_images

    vae = AutoencoderKL.from_pretrained(tiny_sd3_path, subfolder="vae")
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    assert (shift, scale) == (0.0609, 1.5305) and vae.config.latent_channels == 16
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    dist = vae.encode(x).latent_dist
    expected = (dist.mode() - shift) * scale
    assert torch.allclose(encode_images(vae, x, mode="mode"), expected, atol=1e-6)
    assert torch.allclose(sample_latents(dist.parameters, scale, "mode", shift_factor=shift), expected, atol=1e-6)


def test_schedule_is_the_pipelines_rectified_flow(tiny_sd3_path, records, tmp_path):
    trainer = Trainer(config(tiny_sd3_path, records, tmp_path / "a"))
    s = trainer.schedule
    assert isinstance(s, FlowMatchingSchedule) and s.shift == 3.0 and s.num_train_timesteps == 1000
    assert (s.density, s.logit_mean, s.logit_std) == ("logit_normal", 0.0, 1.0)  # SD3 sec. 3.1
    assert trainer.cfg.schedule.density == "logit_normal"  # the resolved value is what config.yaml records
    trainer.close()
    other = Trainer(config(tiny_sd3_path, records, tmp_path / "b", schedule={"density": "mode", "mode_scale": 0.5}))
    assert (other.schedule.density, other.schedule.mode_scale, other.schedule.shift) == ("mode", 0.5, 3.0)
    other.close()


def test_regional_compile_compiles_the_joint_blocks(tiny_sd3_path, records):
    """model.compile=regional on SD3 compiles its MMDiT blocks (the UNets' default block list matches nothing there):
    in place, and, traced by aot_eager (no code generation), a step's prediction and gradients are eager's."""
    import copy

    from diffusers import SD3Transformer2DModel

    from kto_lab.sd.config import load_train_config
    from kto_lab.sd.speed import compile_unet

    cfg = load_train_config(config(tiny_sd3_path, records, "unused", model={"compile": "regional"})).resolved(SD3)
    assert cfg.model.compile_blocks == ["JointTransformerBlock"]
    eager = SD3Transformer2DModel.from_pretrained(tiny_sd3_path, subfolder="transformer")
    compiled = copy.deepcopy(eager)
    assert compile_unet(compiled, "regional", blocks=cfg.model.compile_blocks, backend="aot_eager") == 2
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 16, 16, generator=g), torch.tensor([100.0, 800.0])
    cond = {"encoder_hidden_states": torch.randn(2, 93, 64, generator=g), "pooled_projections": torch.randn(2, 64, generator=g)}
    torch._dynamo.reset()
    outs = []
    for model in (compiled, eager):
        out = SD3.denoiser(model)(x, t, cond)
        out.square().mean().backward()
        outs.append((out.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --- training -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective, extra", [
    ("kto", {"objective": {"utility": "kto"}}),
    ("kto", {"objective": {"utility": "loss_averse"}, "lora": {"enabled": True, "rank": 4}}),
    ("kto", {"objective": {"utility": "risk_seeking"},
             "lora": {"enabled": True, "rank": 4, "reference": "frozen_copy", "target_modules": SD3_LORA_TARGETS}}),
    ("kto", {"objective": {"utility": "prospect", "reference_point": "batch"}}),
    ("sft", {"model": {"gradient_checkpointing": True}}),
    ("csft", {"data": {"caption_dropout": 0.5}}),
    ("bce", {"optim": {"optimizer": "adafactor"}}),
    ("dpo", {"model": {"gradient_checkpointing": True}, "schedule": {"density": "uniform"}}),
    ("nft", {"objective": {"beta": 1.0}}),
    ("nft", {"objective": {"beta": 0.5, "flow_error": "x0"}, "lora": {"enabled": True, "rank": 4}}),
    ("kto", {"objective": {"flow_error": "epsilon"}}),
])
def test_every_objective_trains_on_sd3(tiny_sd3_path, records, pairs, tmp_path, objective, extra):
    cfg = config(tiny_sd3_path, pairs if objective == "dpo" else records, tmp_path / objective,
                 objective={"objective": objective})
    for name, values in extra.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    trainer = Trainer(cfg)
    assert trainer.family is SD3 and isinstance(trainer.schedule, FlowMatchingSchedule)
    if cfg.get("lora", {}).get("target_modules") == SD3_LORA_TARGETS:  # the text stream's projections too
        names = {n for n, p in trainer.base_unet().named_parameters() if p.requires_grad}
        assert any(".attn.add_q_proj.lora_A" in n for n in names) and any(".to_add_out.lora_B" in n for n in names)
    result = trainer.fit()
    rows = read_metrics(result.metrics_path)
    assert result.global_step == 2 and all(math.isfinite(r["loss"]) for r in rows)
    if objective == "kto":
        assert "z_ref" in rows[-1]
    if objective == "nft":
        assert {"nft/positive", "nft/negative"} & set(rows[-1])  # a class absent from the logged batches is NaN, left out
    # the flow error the run used is what config.yaml records (resolved when unset: a later default cannot change it)
    assert trainer.cfg.objective.flow_error == extra.get("objective", {}).get("flow_error", DEFAULT_FLOW_ERROR)


@pytest.mark.parametrize("lora", [False, True])
def test_exact_resume_on_sd3(tiny_sd3_path, records, tmp_path, lora):
    """Full fine-tune (checkpoints hold transformer/) and LoRA KTO with caption dropout: the interrupted and
    resumed run equals the uninterrupted one."""
    def cfg(out):
        return config(tiny_sd3_path, records, out, lora={"enabled": lora, "rank": 4},
                      data={"caption_dropout": 0.3, "center_crop": False},
                      optim={"max_steps": 4, "learning_rate": 3e-2 if lora else 1e-3},
                      checkpoint={"every": 2, "keep": 1})

    full, result = check_exact_resume(cfg, tmp_path)
    checkpoint = next((tmp_path / "b" / "checkpoints").glob("checkpoint-*"))  # the one resumed from (step 2)
    assert (checkpoint / "pytorch_lora_weights.safetensors").is_file() if lora else (checkpoint / "transformer").is_dir()

    if lora:
        from safetensors.torch import load_file

        wa, wb = load_file(full.weights), load_file(result.weights)
    else:
        from diffusers import SD3Transformer2DModel

        assert full.weights.endswith("transformer")
        wa, wb = (SD3Transformer2DModel.from_pretrained(w).state_dict() for w in (full.weights, result.weights))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lora_loads_in_diffusers_sd3_pipeline_and_generates(tiny_sd3_path, lora_run):
    from diffusers import StableDiffusion3Pipeline
    from family_checks import check_lora_loads_and_changes_images
    from safetensors.torch import load_file

    saved = load_file(lora_run.weights)  # peft's keys, as diffusers' SD3 LoRA script saves them
    assert all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in saved)
    pipe = check_lora_loads_and_changes_images(StableDiffusion3Pipeline.from_pretrained(tiny_sd3_path), lora_run)
    # every trained matrix arrived, image and text streams alike
    loaded = {n.replace(".default_0", ""): p for n, p in pipe.transformer.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved) and any(".attn.to_q." in k for k in loaded) and any("add_q_proj" in k for k in loaded)
    assert all(torch.equal(loaded[k[len("transformer."):]], v) for k, v in saved.items())


def test_full_fine_tune_transformer_loads_with_from_pretrained(tiny_sd3_path, records, tmp_path):
    from diffusers import SD3Transformer2DModel

    from kto_lab.sd.models import load_pipeline

    result = Trainer(config(tiny_sd3_path, records, tmp_path / "full")).fit()
    assert result.weights == str(tmp_path / "full" / "transformer") and not (tmp_path / "full" / "unet").exists()
    transformer = SD3Transformer2DModel.from_pretrained(result.weights)
    pipe = load_pipeline(tiny_sd3_path, unet_path=result.weights)  # what `kto-lab eval --unet DIR` does
    assert all(torch.equal(a, b) for a, b in zip(pipe.transformer.parameters(), transformer.parameters()))
    assert "SD3Transformer2DModel" in (tmp_path / "full" / "README.md").read_text()  # the card's snippet


def test_wrong_family_inputs_are_one_line_errors(tiny_sd_path, tiny_sdxl_path, tiny_sd3_path, records, lora_run,
                                                 tmp_path):
    from kto_lab.sd.models import load_pipeline

    with pytest.raises(ConfigError, match="does not fit this StableDiffusionXLPipeline's UNet .* transformer.*another"):
        load_pipeline(tiny_sdxl_path, lora_path=lora_run.weights)  # an SD3 LoRA into SDXL
    with pytest.raises(ConfigError, match="does not fit this StableDiffusionPipeline's UNet"):
        load_pipeline(tiny_sd_path, lora_path=lora_run.weights)  # and into SD 1.5
    sd_lora = Trainer(sd_config(tiny_sd_path, records, tmp_path / "sd", lora={"enabled": True, "rank": 4},
                                optim={"max_steps": 1}, checkpoint={"every": 0})).fit()
    with pytest.raises(ConfigError, match="does not fit this StableDiffusion3Pipeline's SD3Transformer2DModel .*unet"):
        load_pipeline(tiny_sd3_path, lora_path=sd_lora.weights)  # an SD 1.5 LoRA into SD3
    # a denoiser of another family, named before any model loads
    with pytest.raises(ConfigError, match=r"model.unet=.* is a UNet2DConditionModel, not a sd3 SD3Transformer2DModel"):
        Trainer(config(tiny_sd3_path, records, tmp_path / "u", model={"unet": str(tiny_sd_path / "unet")}))
    with pytest.raises(ConfigError, match=r"model.reference=.* is a SD3Transformer2DModel, not a sd UNet2DConditionModel"):
        Trainer(sd_config(tiny_sd_path, records, tmp_path / "r", model={"reference": str(tiny_sd3_path / "transformer")}))
    with pytest.raises(ConfigError, match="is a SD3Transformer2DModel, not a sdxl UNet2DConditionModel"):
        load_pipeline(tiny_sdxl_path, unet_path=tiny_sd3_path / "transformer")


def test_schedule_options_of_the_other_kind_are_one_line_errors(tiny_sd_path, tiny_sd3_path, records, tmp_path):
    with pytest.raises(ConfigError, match="schedule.prediction_type='v_prediction' is a DDPM option, but "
                                          "StableDiffusion3Pipeline .sd3. is a flow-matching model"):
        Trainer(config(tiny_sd3_path, records, tmp_path / "a", schedule={"prediction_type": "v_prediction"}))
    with pytest.raises(ConfigError, match="schedule.density is a flow-matching option, but StableDiffusionPipeline "
                                          ".sd. is a DDPM model"):
        Trainer(sd_config(tiny_sd_path, records, tmp_path / "b", schedule={"density": "uniform"}))
    with pytest.raises(ConfigError, match=r"schedule.logit_std=0.0 must be > 0"):
        Trainer(config(tiny_sd3_path, records, tmp_path / "c", schedule={"logit_std": 0.0}))
    with pytest.raises(ConfigError, match=r"^objective.flow_error='x0' is a flow-matching option, but "
                                          r"StableDiffusionPipeline \(sd\) is a DDPM model") as e:
        Trainer(sd_config(tiny_sd_path, records, tmp_path / "e", objective={"flow_error": "x0"}))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^objective.objective='nft' \(DiffusionNFT\) .* flow-matching models "
                                          r"only .* \(StableDiffusionPipeline, sd\)$") as e:
        Trainer(sd_config(tiny_sd_path, records, tmp_path / "f", objective={"objective": "nft", "beta": 1.0}))
    assert "\n" not in str(e.value)
    # the DDPM option works where it belongs: SD 1.5 trained as a v-prediction model
    trainer = Trainer(sd_config(tiny_sd_path, records, tmp_path / "d", schedule={"prediction_type": "v_prediction"}))
    assert trainer.schedule.prediction_type == "v_prediction"
    assert trainer.components.scheduler_config["prediction_type"] == "v_prediction"  # validation images sample it
    trainer.close()


@pytest.mark.parametrize("flow_error", FLOW_ERRORS)
def test_a_beta_far_outside_the_range_is_a_one_line_warning(tiny_sd_path, tiny_sd3_path, records, tmp_path, flow_error):
    """Each objective.flow_error has its own SD3 range (SD3_BETA_RANGES); DiffusionNFT's beta has its own."""
    from kto_lab.sd.config import NFT_BETA_RANGE

    low, high = SD3.beta_range[flow_error]
    cases = [(low / 10, True, "kto"), (high * 10, True, "kto"), (low, False, "kto"), (high, False, "kto"),
             (NFT_BETA_RANGE[1] * 10, True, "nft"), (1.0, False, "nft")]
    for beta, warned, objective in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            Trainer(config(tiny_sd3_path, records, tmp_path / f"{objective}{beta:g}",
                           objective={"beta": beta, "objective": objective, "flow_error": flow_error})).close()
        messages = [str(w.message) for w in caught if "objective.beta" in str(w.message)]
        assert bool(messages) == warned, (beta, messages)
        if warned:
            assert len(messages) == 1 and "\n" not in messages[0]
            if objective == "kto":
                assert f"is outside [{low:g}, {high:g}]" in messages[0] and f"{flow_error} errors" in messages[0]
            else:
                assert "for DiffusionNFT" in messages[0]
    with warnings.catch_warnings(record=True) as caught:  # SD 1.5's epsilon errors: no SD3 range applies
        warnings.simplefilter("always")
        Trainer(sd_config(tiny_sd_path, records, tmp_path / "sd", objective={"beta": low / 10})).close()
    assert not [w for w in caught if "objective.beta" in str(w.message)]


# --- cache ----------------------------------------------------------------------------------------------------------


def test_cache_round_trips_every_conditioning_tensor(tiny_sd3_path, tiny_sdxl_path, records, tmp_path):
    from safetensors.torch import load_file

    from kto_lab.data.records import load_records
    from kto_lab.sd.cache import EMPTY_CAPTION, read_manifest
    from kto_lab.sd.components import load_components
    from kto_lab.sd.config import load_train_config

    cache = tmp_path / "cache"
    cfg = config(tiny_sd3_path, records, tmp_path / "cached", data={"cache_dir": str(cache), "latent_mode": "mode"})
    cached = Trainer(cfg).fit()
    manifest = read_manifest(cache)
    assert manifest["family"] == "sd3" and (manifest["shift_factor"], manifest["scaling_factor"]) == (0.0609, 1.5305)
    shard = load_file(str(cache / manifest["shards"][0]["file"]))
    assert set(shard) == {"latent_moments", "encoder_hidden_states", "pooled_projections", "labels", "index"}
    assert shard["latent_moments"].shape[1:] == (32, 16, 16) and shard["encoder_hidden_states"].shape[1:] == (93, 64)

    comps = load_components(load_train_config(cfg).model)
    table = load_records(records)
    i = int(shard["index"][0])
    text = SD3.encode_captions(comps, [table.captions[i]])
    for key in SD3.text_keys:
        assert torch.allclose(shard[key][:1], text[key], atol=1e-6), key
    empty = load_file(str(cache / EMPTY_CAPTION))
    assert torch.allclose(empty["encoder_hidden_states"], SD3.encode_captions(comps, [""])["encoder_hidden_states"],
                          atol=1e-6)

    # training from the cache equals training from the images (same rows, same draws, fp32 moments, same shift)
    direct = Trainer(config(tiny_sd3_path, records, tmp_path / "direct", data={"latent_mode": "mode"})).fit()
    for a, b in zip(read_metrics(cached.metrics_path), read_metrics(direct.metrics_path)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["z_ref"] == pytest.approx(b["z_ref"], abs=1e-5)

    # a cache of another family is refused in one line, before training
    with pytest.raises(ConfigError, match="built with family='sd3', but the config has 'sdxl'"):
        Trainer(config(tiny_sdxl_path, records, tmp_path / "xl", data={"cache_dir": str(cache)}))


# --- distributed, evaluation ---------------------------------------------------------------------------------------


def test_two_process_sd3_run_agrees_on_z_ref(tiny_sd3_path, records, tmp_path):
    from family_checks import check_two_process_run

    r0, _ = check_two_process_run(config(tiny_sd3_path, records, tmp_path / "run",
                                         optim={"max_steps": 10, "batch_size": 2}), tmp_path)
    assert (Path(r0["checkpoint"]) / "transformer").is_dir()


def test_eval_generate_and_implicit_accuracy_on_sd3(tiny_sd3_path, records, lora_run, tmp_path):
    from family_checks import check_eval_generate_and_implicit_accuracy

    res = check_eval_generate_and_implicit_accuracy(tiny_sd3_path, records, lora_run.weights, tmp_path)
    assert res.rewards.std() > 0  # velocity errors under the flow schedule give rewards that differ per image


def test_shipped_sd3_config_loads(tmp_path):
    from kto_lab.sd.config import load_train_config

    cfg = load_train_config(Path(__file__).resolve().parents[1] / "kto_lab" / "configs" / "sd3_kto_lora.yaml")
    assert cfg.data.resolution == 1024 and cfg.model.gradient_checkpointing and cfg.lora.enabled
    assert cfg.lora.target_modules == SD3_LORA_TARGETS  # diffusers' SD3 LoRA script's targets
    low, high = SD3.beta_range[DEFAULT_FLOW_ERROR]
    assert low <= cfg.objective.beta <= high and cfg.schedule.density == "logit_normal"


def test_a_flow_run_from_before_flow_error_resumes_as_the_velocity_run_it_was():
    """Runs made before objective.flow_error existed used velocity errors: their config.yaml lacks the field, and
    resuming them counts it as 'velocity' (not as the current default), so a later default cannot change them."""
    import dataclasses

    from kto_lab.sd.config import TrainConfig
    from kto_lab.sd.run_dir import config_differences

    new = dataclasses.asdict(TrainConfig())
    old = {k: (dict(v) if isinstance(v, dict) else v) for k, v in new.items()}
    del old["objective"]["flow_error"]
    assert config_differences(old, new) == []  # a DDPM run: None then and now
    for flow_error, diffs in (("velocity", []), ("x0", ["objective.flow_error: 'velocity' -> 'x0'"])):
        new["objective"]["flow_error"] = flow_error
        assert config_differences(old, new) == diffs
