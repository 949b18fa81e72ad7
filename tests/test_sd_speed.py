"""The trainer's speed switches on CPU (kto_lab.sd.speed) with SD's UNets: torch.compile, whole or block by block,
in place; channels_last. Compiled and eager steps must give the same losses (every family's regional compile,
traced like eager, is in tests/test_families.py). Behaviour only: how long compiling takes is measured by
benchmarks/sd_step.py, not asserted here."""

import pytest
import torch

from kto_lab.sd.speed import compile_denoiser
from kto_lab.sd.trainer import Trainer
from sd_helpers import write_records


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("records"))


@pytest.fixture(scope="module")
def one_level_sd(tmp_path_factory):
    """The smallest SD UNet with both block kinds (one cross-attention level): the fewest graphs to compile."""
    from kto_lab.sd.families import FAMILIES

    return FAMILIES["sd"].build_tiny(tmp_path_factory.mktemp("one_level_sd"), block_out_channels=(32,), image_size=16)


def _unet(path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(path, subfolder="unet")


def test_compile_denoiser_names_what_is_wrong(tiny_sd_path):
    unet = _unet(tiny_sd_path)
    with pytest.raises(ValueError, match=r"model.compile_blocks=\['Transformer2DModelX'\] matched no module"):
        compile_denoiser(unet, "regional", blocks=["Transformer2DModelX"])
    with pytest.raises(ValueError, match="compile='partial'"):
        compile_denoiser(unet, "partial")
    assert compile_denoiser(unet, "none") == 0


def _config(sd, records, out, **model):
    return {"output_dir": str(out), "cpu": True, "seed": 0, "model": {"pretrained": str(sd), **model},
            "data": {"train": [str(records)], "resolution": 16},
            "objective": {"objective": "kto", "beta": 20.0},
            "optim": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0},
            "logging": {"log_every": 1, "progress_bar": False}, "checkpoint": {"every": 0}}


def _losses(cfg, steps=2):
    trainer = Trainer(cfg)
    losses = [float(trainer.step(trainer.source.next_batch())["loss"]) for _ in range(steps)]
    keys = list(trainer.base_denoiser().state_dict())
    trainer.close()
    return losses, keys


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora_disabled_adapters"])
def test_regional_inductor_steps_give_the_eager_losses(one_level_sd, records, tmp_path, lora):
    """Two real trainer steps (policy with grad, unrelated pairs without, reference on 2B samples;
    for LoRA the reference is the same blocks with adapters disabled), compiled by inductor, one
    block class to keep the compile short on a CPU. Tolerance: fp32 on CPU, inductor's fused
    kernels sum in another order, so losses differ by float rounding (about 1e-6 here); rtol 1e-4
    leaves room for that while a wrong graph (a missed adapter switch, a stale guard) moves the
    loss by far more."""
    cfg = _config(one_level_sd, records, tmp_path / "eager")
    if lora:
        cfg["lora"] = {"enabled": True, "rank": 4}
        cfg["optim"]["learning_rate"] = 3e-2
    want, keys = _losses(cfg)
    cfg.update(output_dir=str(tmp_path / "regional"))
    cfg["model"].update(compile="regional", compile_blocks=["BasicTransformerBlock"])
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        got, compiled_keys = _losses(cfg)
    torch._dynamo.reset()
    assert want[0] != want[1]  # the first update changed the model
    assert got == pytest.approx(want, rel=1e-4)
    assert compiled_keys == keys


def test_channels_last_keeps_the_losses(tiny_sd_path, records, tmp_path):
    """channels_last changes only the memory layout of the UNets' 4-d weights (policy and reference)."""
    want, _ = _losses(_config(tiny_sd_path, records, tmp_path / "a") | {"data": {"train": [str(records)], "resolution": 32}})
    cfg = _config(tiny_sd_path, records, tmp_path / "b", channels_last=True) | {"data": {"train": [str(records)], "resolution": 32}}
    trainer = Trainer(cfg)
    for unet in (trainer.base_denoiser(), trainer.reference_denoiser):
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    trainer.close()
    got, _ = _losses(cfg | {"output_dir": str(tmp_path / "c")})
    assert got == pytest.approx(want, rel=1e-4)
