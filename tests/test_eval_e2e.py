"""End-to-end evaluation of tiny Stable Diffusion pipelines (base, base again, base + LoRA,
base + another UNet): generate -> score -> win rates, from Python and from the command line;
implicit reward accuracy on held-out labels."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kto_lab.config import ConfigError, load_config
from kto_lab.eval.run import EvalConfig, run_evaluation


STEPS, N = 2, 2


def make_lora(tiny_sd_path, out, seed: int, std: float):
    """A LoRA for the tiny UNet whose lora_B weights are N(0, std) (lora_B = 0 would change nothing)."""
    from diffusers import UNet2DConditionModel

    from kto_lab.sd.components import add_lora, save_lora
    from kto_lab.sd.families import FAMILIES

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path / "unet")
    add_lora(unet, rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    save_lora(unet, out, FAMILIES["sd"])
    return out


@pytest.fixture(scope="module")
def lora_dir(tiny_sd_path, tmp_path_factory):
    """A LoRA for the tiny UNet with non-zero weights (so it changes the images)."""
    return make_lora(tiny_sd_path, tmp_path_factory.mktemp("lora"), seed=0, std=0.5)


@pytest.fixture(scope="module")
def other_unet(tiny_sd_path, tmp_path_factory):
    """A 'fine-tuned' UNet: the tiny UNet with its weights perturbed, in diffusers format."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path / "unet")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("unet")
    unet.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def evaluation(tiny_sd_path, lora_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    hps = root / "hps"
    hps.mkdir()
    (hps / "anime.json").write_text(json.dumps(["a red circle", "a blue square"]))
    (hps / "photo.json").write_text(json.dumps(["a small green circle"]))
    overrides = {
        "prompts": str(hps), "out_dir": str(root / "out"), "n_per_prompt": N, "num_inference_steps": STEPS,
        "batch_size": 4, "n_bootstrap": 200, "device": "cpu",
        "models": [{"name": "base", "pipeline": str(tiny_sd_path)},
                   {"name": "base_again", "pipeline": str(tiny_sd_path)},
                   {"name": "lora", "pipeline": str(tiny_sd_path), "lora": str(lora_dir)}],
        "compare": ["lora:base", "base_again:base"],
        "scorers": [{"name": "redness"}, {"name": "brightness"}],
    }
    cfg = load_config(EvalConfig, overrides=overrides)
    return cfg, run_evaluation(cfg, progress=False)


def test_same_model_twice_ties_everywhere(evaluation):
    _, result = evaluation
    w = result.wins[(result.wins.model_a == "base_again")]
    assert set(w["style"]) == {"all", "anime", "photo"}
    assert (w["win_rate"] == 50.0).all() and (w["ties"] == w["n_prompts"]).all()
    assert w[w["style"] == "all"]["n_prompts"].tolist() == [3, 3]


def test_shared_seeds_and_a_lora_changes_images(evaluation):
    cfg, result = evaluation
    s = result.scores
    base, lora = (s[s.model == m].sort_values(["prompt_id", "k"]) for m in ("base", "lora"))
    assert base["seed"].tolist() == lora["seed"].tolist() == list(range(6))  # seed + i * N + k
    a = np.asarray(Image.open(f"{cfg.out_dir}/base/{base.file.iloc[0]}"))
    b = np.asarray(Image.open(f"{cfg.out_dir}/base_again/{base.file.iloc[0]}"))
    c = np.asarray(Image.open(f"{cfg.out_dir}/lora/{lora.file.iloc[0]}"))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    w = result.wins[(result.wins.model_a == "lora") & (result.wins["style"] == "all")]
    assert (w["ties"] < w["n_prompts"]).all() and (w["failed_a"] == 0).all()
    # 3 prompts are too few for an interval (stats.MIN_PROMPTS): the rate is shown, the interval is not
    assert w["ci_low"].isna().all() and w["paper_ci_low"].isna().all()
    assert (w["ci_note"] == "no interval: 3 prompt(s) < 10").all()


def test_outputs_written_and_resume_skips_everything(evaluation):
    cfg, result = evaluation
    for key in ("report", "win_rates", "mean_scores", "win_rates_png", "scores_png"):
        assert result.paths[key].is_file()
    report = result.paths["report"].read_text()
    assert "| lora vs base |" in report and "[no interval: 3 prompts]" in report  # 3 < stats.MIN_PROMPTS
    assert "Ties (count half): median scores within the scorer's tie tolerance, redness 0.00196" in report
    m = result.means[(result.means["style"] == "all")]
    assert set(m.model) == {"base", "base_again", "lora"} and (m.n_images == 6).all()
    again = run_evaluation(cfg, progress=False, make_plots=False)
    assert all(c == {"ok": 0, "failed": 0, "skipped": 6} for c in again.generation.values())
    pd.testing.assert_frame_equal(again.wins, result.wins)


def test_eval_run_with_a_model_pointed_at_another_lora_reports_the_new_one(evaluation, other_lora, tmp_path):
    """issue 21, 4a: re-running ``eval run`` after pointing a model name at another LoRA skipped every image and
    reproduced the first LoRA's report byte for byte."""
    import dataclasses
    import shutil

    cfg, result = evaluation
    out = tmp_path / "out"
    shutil.copytree(cfg.out_dir, out)
    models = [dataclasses.replace(m, lora=str(other_lora)) if m.name == "lora" else m for m in cfg.models]
    again = run_evaluation(dataclasses.replace(cfg, out_dir=str(out), models=models), progress=False, make_plots=False)
    assert again.generation["lora"] == {"ok": 6, "failed": 0, "skipped": 0}
    assert again.generation["base"]["skipped"] == 6
    old = result.scores[result.scores.model == "lora"].set_index(["prompt_id", "k"])["redness"]
    new = again.scores[again.scores.model == "lora"].set_index(["prompt_id", "k"])["redness"]
    assert not np.allclose(old.sort_index(), new.sort_index())  # the new LoRA's images and scores


def test_cli_score_and_compare_on_the_generated_images(evaluation, capsys):
    from kto_lab.cli import main

    cfg, _ = evaluation
    assert main(["eval", "score", "--out", cfg.out_dir, "--models", "base", "lora", "--scorer", "saturation"]) == 0
    assert main(["eval", "compare", "--out", cfg.out_dir, "--pair", "lora:base", "--ci", "wilson",
                 "--metrics", "saturation", "--no-plots"]) == 0
    out = capsys.readouterr().out
    kept = pd.read_csv(f"{cfg.out_dir}/base/scores.csv").columns
    assert {"redness", "brightness", "saturation"} <= set(kept)  # scoring a new metric keeps the earlier ones
    assert "| lora vs base |" in out and "saturation" in out and "wilson" in out
    assert main(["eval", "score", "--out", cfg.out_dir, "--models", "base", "--scorer", "pickscore"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kto-lab eval: error:") and "needs path=" in err and "Traceback" not in err


def test_cli_generate_shares_the_run_seeds_and_checks_values_first(evaluation, tiny_sd_path, tmp_path, capsys):
    from kto_lab.cli import main

    cfg, result = evaluation
    args = ["eval", "generate", "--pipeline", str(tiny_sd_path), "--name", "cli", "--prompts", cfg.prompts,
            "--out", str(tmp_path), "-n", str(N), "--steps", str(STEPS), "--device", "cpu"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"cli": {"ok": 6, "failed": 0, "skipped": 0}}
    base = result.scores[result.scores.model == "base"]
    for f in base.file:  # the same seeds as `eval run`: the same images as the base model's
        assert np.array_equal(np.asarray(Image.open(tmp_path / "cli" / f)), np.asarray(Image.open(f"{cfg.out_dir}/base/{f}")))
    assert main([*args, "-n", "0"]) == 2  # the last -n wins
    assert "n_per_prompt" in capsys.readouterr().err


def test_config_errors_before_any_model_loads(tiny_sd_path):
    ok = {"prompts": "p.txt", "models": [{"name": "a", "pipeline": str(tiny_sd_path)}]}
    with pytest.raises(ConfigError, match="not in models"):
        load_config(EvalConfig, overrides={**ok, "compare": ["a:b"]})
    with pytest.raises(ConfigError, match="scorers\\[0\\].name='pick'"):
        load_config(EvalConfig, overrides={**ok, "scorers": [{"name": "pick"}]})
    with pytest.raises(ConfigError, match="clip_path"):
        load_config(EvalConfig, overrides={**ok, "scorers": [{"name": "hpsv2", "path": "x.pt"}]})
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(EvalConfig, overrides={**ok, "n_images": 5})
    with pytest.raises(ConfigError, match="on_failure"):
        load_config(EvalConfig, overrides={**ok, "on_failure": "drop"})


def test_implicit_reward_accuracy(tiny_sd_path, other_unet, lora_dir, evaluation, tmp_path):
    from kto_lab.data.records import write_records
    from kto_lab.eval.implicit import evaluate_implicit_accuracy, sign_accuracy

    cfg, result = evaluation
    s = result.scores[result.scores.model == "base"].head(4)
    rows = [{"image": f"{cfg.out_dir}/base/{f}", "caption": p, "label": i % 2} for i, (f, p) in enumerate(zip(s.file, s.prompt))]
    records = write_records(rows, tmp_path / "heldout.jsonl")

    same = evaluate_implicit_accuracy(tiny_sd_path, records, denoiser_path=tiny_sd_path / "unet", n_draws=2, progress=False)
    assert same.to_dict()["metric"] == "sign_accuracy"
    assert (same.rewards == 0).all() and same.accuracy == 0.5  # policy == reference: every reward is 0 (counts half)

    res = evaluate_implicit_accuracy(tiny_sd_path, records, lora_path=lora_dir, n_draws=2, batch_size=3, progress=False)
    assert res.n == 4 and np.isfinite(res.rewards).all() and (res.rewards != 0).all()
    assert res.accuracy == sign_accuracy(res.rewards, res.labels).accuracy
    assert sign_accuracy(res.rewards, 1 - res.labels).accuracy == pytest.approx(1 - res.accuracy)
    again = evaluate_implicit_accuracy(tiny_sd_path, records, lora_path=lora_dir, n_draws=2, batch_size=3, progress=False)
    np.testing.assert_array_equal(again.rewards, res.rewards)  # fixed seed: same (t, noise) draws
    full = evaluate_implicit_accuracy(tiny_sd_path, records, denoiser_path=other_unet, n_draws=1, progress=False)
    assert (full.rewards != 0).all()
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_implicit_accuracy(tiny_sd_path, records)


def test_pairwise_implicit_reward_accuracy(tiny_sd_path, lora_dir, evaluation, tmp_path):
    """Diffusion-DPO Table 2's metric on held-out pairs: winner and loser of a pair see the same t and
    noise, so a pair of one image twice ties exactly and swapping every pair flips the accuracy."""
    from kto_lab.data.records import write_pairs
    from kto_lab.eval.implicit import evaluate_implicit_accuracy, pairwise_accuracy

    cfg, result = evaluation
    s = result.scores[result.scores.model == "base"].head(4)
    files, prompts = [f"{cfg.out_dir}/base/{f}" for f in s.file], list(s.prompt)
    rows = [{"caption": prompts[i], "image_w": files[i], "image_l": files[(i + 1) % 4]} for i in range(4)]
    pairs = write_pairs(rows, tmp_path / "pairs.jsonl")
    swapped = write_pairs([{**r, "image_w": r["image_l"], "image_l": r["image_w"]} for r in rows], tmp_path / "sw.jsonl")
    same = write_pairs([{**r, "image_l": r["image_w"]} for r in rows], tmp_path / "same.jsonl")

    kw = dict(lora_path=lora_dir, n_draws=2, batch_size=3, progress=False)
    res = evaluate_implicit_accuracy(tiny_sd_path, pairs_path=pairs, **kw)
    assert res.n == 4 and res.to_dict()["metric"] == "pairwise_accuracy"
    assert res.accuracy == pairwise_accuracy(res.rewards_winner, res.rewards_loser).accuracy
    flipped = evaluate_implicit_accuracy(tiny_sd_path, pairs_path=swapped, **kw)
    np.testing.assert_array_equal(flipped.rewards_winner, res.rewards_loser)
    assert flipped.accuracy == pytest.approx(1 - res.accuracy)
    tie = evaluate_implicit_accuracy(tiny_sd_path, pairs_path=same, **kw)
    np.testing.assert_array_equal(tie.rewards_winner, tie.rewards_loser)
    assert tie.accuracy == 0.5
    with pytest.raises(ValueError, match="exactly one of pairs_path"):
        evaluate_implicit_accuracy(tiny_sd_path, pairs_path=pairs, records_path=pairs, lora_path=lora_dir)


def test_pairwise_accuracy_known_values():
    from kto_lab.eval.implicit import pairwise_accuracy

    acc = pairwise_accuracy([2.0, 1.0, 0.0], [1.0, 1.0, 3.0])  # right, tie (half), wrong
    assert acc.accuracy == pytest.approx(0.5) and acc.n == 3


def test_sign_accuracy_known_values():
    from kto_lab.eval.implicit import sign_accuracy

    acc = sign_accuracy([1.0, -2.0, 0.0, 3.0], [1, 0, 1, 0])  # right, right, half, wrong
    assert acc.accuracy == pytest.approx(2.5 / 4)
    assert acc.accuracy_desirable == pytest.approx(0.75) and acc.accuracy_undesirable == pytest.approx(0.5)


@pytest.fixture(scope="module")
def other_lora(tiny_sd_path, tmp_path_factory):
    """A second LoRA (other non-zero weights): another training run's output."""
    return make_lora(tiny_sd_path, tmp_path_factory.mktemp("lora2"), seed=7, std=0.5)


def test_a_name_pointed_at_another_lora_or_other_steps_is_generated_again(
        evaluation, tiny_sd_path, lora_dir, other_lora, tmp_path, capsys, caplog):
    """issue 21, 4a: ``eval generate --lora RUN2 --name kto`` after RUN1 gave {"ok": 0, "skipped": 6} and
    kept RUN1's images (``eval run`` then reproduced RUN1's report byte for byte); so did other --steps."""
    from kto_lab.cli import main

    cfg, _ = evaluation
    args = ["eval", "generate", "--pipeline", str(tiny_sd_path), "--name", "kto", "--prompts", cfg.prompts,
            "--out", str(tmp_path), "-n", str(N), "--steps", str(STEPS), "--device", "cpu"]
    assert main([*args, "--lora", str(lora_dir)]) == 0
    assert json.loads(capsys.readouterr().out) == {"kto": {"ok": 6, "failed": 0, "skipped": 0}}
    assert main([*args, "--lora", str(lora_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["kto"]["skipped"] == 6
    with caplog.at_level("WARNING"):
        assert main([*args, "--lora", str(other_lora)]) == 0
    assert json.loads(capsys.readouterr().out) == {"kto": {"ok": 6, "failed": 0, "skipped": 0}}
    assert "kto: 6 image(s) were made with other settings (lora weights replaced" in caplog.text
    assert main(["eval", "generate", *args[2:], "--lora", str(other_lora), "--name", "fresh"]) == 0
    capsys.readouterr()
    for f in sorted((tmp_path / "fresh" / "images").glob("*.png")):  # RUN2's images, not RUN1's
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(tmp_path / "kto" / "images" / f.name)))
    assert main([*args[:-4], "--steps", "3", "--device", "cpu", "--lora", str(other_lora)]) == 0
    assert json.loads(capsys.readouterr().out)["kto"]["ok"] == 6


def test_a_model_against_itself_or_a_no_op_lora_is_even_not_a_win(tiny_sd_path, tmp_path):
    """issue 21, 8: a LoRA that changed 98 of 61,440 pixel values by one level was reported a 12.5 % [0.0, 37.5]
    redness win rate over its base: differences of ~1e-5 counted as wins, over 4 prompts. Here a LoRA whose
    lora_B is 1e-3 changes about 6 % of pixel values by one level (and every image's redness by ~1e-4, all
    the same way: the old rule gave 100 % [100, 100]); over 10 prompts it ties its base, as the base ties itself."""
    make_lora(tiny_sd_path, tmp_path / "noop", seed=0, std=1e-3)
    (tmp_path / "p.txt").write_text("".join(f"a red circle number {i}\n" for i in range(10)))
    cfg = load_config(EvalConfig, overrides={
        "prompts": str(tmp_path / "p.txt"), "out_dir": str(tmp_path / "out"), "n_per_prompt": 1,
        "num_inference_steps": STEPS, "n_bootstrap": 200, "device": "cpu",
        "models": [{"name": "base", "pipeline": str(tiny_sd_path)}, {"name": "again", "pipeline": str(tiny_sd_path)},
                   {"name": "noop", "pipeline": str(tiny_sd_path), "lora": str(tmp_path / "noop")}],
        "compare": ["again:base", "noop:base"], "scorers": [{"name": "redness"}, {"name": "brightness"}]})
    result = run_evaluation(cfg, progress=False, make_plots=False)
    a = np.stack([np.asarray(Image.open(f), dtype=int) for f in sorted((tmp_path / "out/base/images").glob("*.png"))])
    b = np.stack([np.asarray(Image.open(f), dtype=int) for f in sorted((tmp_path / "out/noop/images").glob("*.png"))])
    assert np.abs(a - b).max() == 1 and 0.01 < (a != b).mean() < 0.2  # the LoRA does change the images, by a level
    w = result.wins[result.wins["style"] == "all"]
    assert len(w) == 4 and (w["n_prompts"] == 10).all()
    assert ((w["ci_low"] <= 50) & (50 <= w["ci_high"])).all(), w
    assert (w["win_rate"] == 50).all() and (w["ties"] == 10).all()
