"""SPIN-Diffusion iterations (kto_lab.spin) on the tiny random SD pipeline, and the CLI's early checks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch



def _real_records(tmp_path: Path, n: int = 6) -> Path:
    from kto_lab.synthetic.base import write_image_records
    from kto_lab.synthetic.shapes import Scene, render

    scenes = [Scene("circle", "red", "blue", "small", "left"), Scene("square", "green", "white", "large", "center")]
    images = np.stack([render(scenes[i % 2], 32) for i in range(n)])
    captions = [scenes[i % 2].caption for i in range(n)]
    labels = [1] * (n - 1) + [0]  # the one undesirable row must never become a winner
    return write_image_records(images, captions, labels, tmp_path / "real")


def test_spin_uses_real_winners_own_losers_and_the_previous_iteration_as_reference(tiny_sd_path, tmp_path):
    from diffusers import UNet2DConditionModel

    from kto_lab.data.records import load_pairs
    from kto_lab.spin import spin
    from kto_lab.synthetic.evaluate import make_pipeline, sample

    records = _real_records(tmp_path)
    calls = []
    pipe = make_pipeline(tiny_sd_path)
    base_unet = pipe.unet

    def generate(pretrained, unet_dir, captions, seeds):
        calls.append(unet_dir)
        pipe.unet = base_unet if unet_dir is None else UNet2DConditionModel.from_pretrained(unet_dir)
        return sample(pipe, captions, seeds, steps=2)

    cfg = {"seed": 0, "cpu": True, "model": {"pretrained": str(tiny_sd_path)},
           "data": {"resolution": 32}, "objective": {"beta": 1000.0},
           "optim": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0},
           "logging": {"progress_bar": False, "log_every": 1}, "checkpoint": {"every": 0}}
    its = spin(cfg, records, tmp_path / "spin", generate, iterations=2, seed=0)

    assert [it.iteration for it in its] == [1, 2]
    assert calls == [None, its[0].denoiser]  # iteration 2 draws its losers from iteration 1's model
    assert its[0].reference is None and its[1].reference == its[0].denoiser
    saved = yaml_config(Path(its[1].denoiser).parent)
    assert saved["objective"]["objective"] == "dpo" and saved["model"]["reference"] == its[0].denoiser
    assert saved["model"]["denoiser"] == its[0].denoiser
    pairs = load_pairs(its[0].pairs)
    assert len(pairs) == 5  # every desirable (real) record, none of the undesirable one
    for i in range(len(pairs)):
        assert "real/images" in pairs.raw_image(i, "image_w") and "self" in pairs.raw_image(i, "image_l")
    a = UNet2DConditionModel.from_pretrained(its[1].denoiser).state_dict()
    b = base_unet.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in b)
    assert json.loads((tmp_path / "spin" / "iteration-2" / "spin.json").read_text())["iteration"] == 2


def yaml_config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_spin_needs_real_images(tiny_sd_path, tmp_path):
    from kto_lab.spin import spin
    from kto_lab.synthetic.base import write_image_records
    from kto_lab.synthetic.shapes import Scene, render

    img = render(Scene("circle", "red", "blue", "small", "left"), 32)
    records = write_image_records(img[None], ["a red circle"], [0], tmp_path / "r")
    with pytest.raises(ValueError, match="no desirable"):
        spin({"model": {"pretrained": str(tiny_sd_path)}}, records, tmp_path / "s", lambda *a: None)


@pytest.mark.parametrize("kwargs, generate, match", [
    ({"pairs_per_iteration": 0}, lambda *a: None, "pairs_per_iteration must be >= 1.*got 0"),
    ({}, lambda p, u, caps, seeds: np.zeros((len(caps) - 1, 3, 32, 32), np.float32),
     r"generate returned 4 images for 5 captions \(iteration 1\)"),
])
def test_spin_names_bad_inputs_before_training(tiny_sd_path, tmp_path, kwargs, generate, match):
    from kto_lab.spin import spin

    records = _real_records(tmp_path)
    with pytest.raises(ValueError, match=match):
        spin({"model": {"pretrained": str(tiny_sd_path)}}, records, tmp_path / "s", generate, **kwargs)


@pytest.mark.parametrize("args, match", [
    (["base", "--out", "X", "base.unet_steps=0"], "base.unet_steps"),
    (["base", "--out", "X", "base.image_size=20"], "base.image_size"),
    (["compare", "--base", "B", "--out", "X", "align.user=blue"], "align.user"),
    (["compare", "--base", "B", "--out", "X", "align.methods=[kto,ppo]"], "align.methods"),
    (["compare", "--base", "B", "--out", "X", "align.nope=1"], "nope"),
    (["compare", "--base", "B", "--out", "X", "base.steps=1"], "align."),
])
def test_cli_rejects_bad_settings_before_training(args, match, tmp_path, capsys):
    from kto_lab.cli import main

    assert main(["synthetic", *args]) == 2  # one line naming the setting, no traceback
    err = capsys.readouterr().err
    assert err.startswith("kto-lab synthetic: error:") and match in err and "Traceback" not in err
