"""The protocol on cheap stand-ins: a fake pipeline (a colour per seed) for generation mechanics
(shared seeds, resume, failures), hand-made score tables for the median-of-N rule and win rates,
a tiny safety checker built from config."""

import re
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kto_lab.eval.generate import SafetyChecker, generate_images, image_seed, read_manifest
from kto_lab.eval.prompts import Prompt
from kto_lab.eval.protocol import load_scores, mean_scores, median_table, nsfw_shares, score_model, win_rates
from kto_lab.eval.report import markdown_table, plot_score_distributions, plot_win_rates, write_report
from kto_lab.eval.scorers import get_scorer
from kto_lab.eval.stats import paper_interval

from figure_checks import legend_texts, overlapping_texts


PROMPTS = [Prompt("p0", "a red circle", "anime"), Prompt("p1", "a FAIL square", "photo"), Prompt("p2", "green", "photo")]


class FakePipe:
    """Stands in for StableDiffusionPipeline: image colour drawn from the image's own generator."""

    def __init__(self, shift=0.0, fail_on=()):
        self.shift, self.fail_on, self.calls = shift, fail_on, []

    def __call__(self, prompt, generator, num_inference_steps, guidance_scale, output_type, **kw):
        self.calls.append(len(prompt))
        if any(f in p for p in prompt for f in self.fail_on):
            raise RuntimeError("boom")
        images = []
        for g in generator:
            rgb = np.clip(torch.rand(3, generator=g).numpy() + self.shift, 0, 1)
            images.append(Image.fromarray(np.tile((rgb * 255).astype(np.uint8), (8, 8, 1))))
        return SimpleNamespace(images=images)


def run(pipe, out, name, **kw):
    return generate_images(pipe, PROMPTS, out / name, model_name=name, n_per_prompt=3, base_seed=10,
                           progress=False, **kw)


def test_seeds_are_shared_across_models_and_independent_of_batching(tmp_path):
    run(FakePipe(), tmp_path, "a", batch_size=4)
    run(FakePipe(), tmp_path, "b", batch_size=1)
    rows_a = {(r["prompt_id"], r["k"]): r for r in read_manifest(tmp_path / "a")}
    rows_b = {(r["prompt_id"], r["k"]): r for r in read_manifest(tmp_path / "b")}
    assert rows_a.keys() == rows_b.keys() and len(rows_a) == 9
    for (pid, k), r in rows_a.items():
        i = [p.id for p in PROMPTS].index(pid)
        assert r["seed"] == rows_b[(pid, k)]["seed"] == image_seed(10, i, k, 3) == 10 + 3 * i + k
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / r["file"])),
                              np.asarray(Image.open(tmp_path / "b" / rows_b[(pid, k)]["file"])))
    scorers = {"redness": get_scorer("redness")}
    for m in "ab":
        score_model(tmp_path / m, scorers, progress=False)
    wins = win_rates(load_scores(tmp_path, ["a", "b"]), "a", "b", method="wilson")
    overall = wins[wins["style"] == "all"].iloc[0]
    assert overall.win_rate == 50.0 and overall.ties == 3 and overall.n_prompts == 3  # identical images: all ties


def test_failures_are_recorded_counted_and_retried_on_resume(tmp_path):
    counts = run(FakePipe(fail_on=("FAIL",)), tmp_path, "b", batch_size=2)
    assert counts == {"ok": 6, "failed": 3, "skipped": 0}
    failed = [r for r in read_manifest(tmp_path / "b") if r["status"] == "failed"]
    assert {r["prompt_id"] for r in failed} == {"p1"} and all("boom" in r["error"] for r in failed)
    run(FakePipe(shift=0.3), tmp_path, "a")  # a redder model, no failures
    scorers = {"redness": get_scorer("redness"), "brightness": get_scorer("brightness")}
    for m in "ab":
        score_model(tmp_path / m, scorers, progress=False)
    scores = load_scores(tmp_path, ["a", "b"])
    assert scores.loc[(scores.model == "b") & (scores.prompt_id == "p1"), "redness"].isna().all()

    loss = win_rates(scores, "a", "b", ["redness"], method="normal", on_failure="loss")
    row = loss[loss["style"] == "all"].iloc[0]
    assert (row.n_prompts, row.failed_a, row.failed_b, row.excluded) == (3, 0, 1, 0)
    photo = loss[loss["style"] == "photo"].iloc[0]
    assert photo.failed_b == 1 and photo.n_prompts == 2
    excl = win_rates(scores, "a", "b", ["redness"], method="normal", on_failure="exclude")
    row = excl[excl["style"] == "all"].iloc[0]
    assert (row.n_prompts, row.failed_b, row.excluded) == (2, 1, 1)
    # a model that lost a prompt to failures is beaten there: b vs a gives a loss for b on p1
    rev = win_rates(scores, "b", "a", ["redness"], method="normal")
    assert rev[rev["style"] == "all"].iloc[0].failed_a == 1

    means = mean_scores(scores, ["redness"])
    mb = means[(means.model == "b") & (means["style"] == "all")].iloc[0]
    assert (mb.n_images, mb.n_failed_images) == (6, 3)

    # resume: a deleted image is regenerated, failed ones are retried, the rest skipped
    done = [r for r in read_manifest(tmp_path / "b") if r["status"] == "ok"]
    (tmp_path / "b" / done[0]["file"]).unlink()
    pipe = FakePipe()
    assert run(pipe, tmp_path, "b") == {"ok": 4, "failed": 0, "skipped": 5}
    assert all(r["status"] == "ok" for r in read_manifest(tmp_path / "b"))
    rescored = score_model(tmp_path / "b", scorers, progress=False)
    assert rescored["redness"].notna().all() and len(rescored) == 9


def test_resume_is_keyed_on_the_prompt_text_and_compare_refuses_mixed_texts(tmp_path):
    """Editing a prompt file and re-running regenerates (and rescores) the changed prompt only; a
    model still holding the old text's images is not paired with the new ones."""
    from kto_lab.data.tables import DataError

    scorers = {"redness": get_scorer("redness")}
    for m in "ab":
        run(FakePipe(), tmp_path, m)
        score_model(tmp_path / m, scorers, progress=False)
    edited = [PROMPTS[0], Prompt("p1", "a FAIL square, edited", "photo"), PROMPTS[2]]
    pipe = FakePipe(shift=0.5)  # the "new" images differ from the old ones
    counts = generate_images(pipe, edited, tmp_path / "a", model_name="a", n_per_prompt=3, base_seed=10, progress=False)
    assert counts == {"ok": 3, "failed": 0, "skipped": 6}
    rows = {(r["prompt_id"], r["k"]): r for r in read_manifest(tmp_path / "a")}
    assert all(rows[("p1", k)]["prompt"] == "a FAIL square, edited" for k in range(3))
    rescored = score_model(tmp_path / "a", scorers, progress=False).set_index(["prompt_id", "k"])
    old = pd.read_csv(tmp_path / "b" / "scores.csv").set_index(["prompt_id", "k"])
    assert rescored.loc[("p1", 0), "redness"] != old.loc[("p1", 0), "redness"]  # the new image's score, not the old
    assert rescored.loc[("p0", 0), "redness"] == old.loc[("p0", 0), "redness"]
    with pytest.raises(DataError, match=r"prompt id 'p1': images of \['a'\] were made from 'a FAIL square, edited' "
                                         r"but images of \['b'\] from 'a FAIL square'"):
        win_rates(load_scores(tmp_path, ["a", "b"]), "a", "b", method="wilson")
    generate_images(FakePipe(), edited, tmp_path / "b", model_name="b", n_per_prompt=3, base_seed=10, progress=False)
    score_model(tmp_path / "b", scorers, progress=False)
    assert len(win_rates(load_scores(tmp_path, ["a", "b"]), "a", "b", method="wilson"))


def test_median_of_n_decides_the_winner_not_the_best_image():
    rows = []
    for model, vals in (("a", [1.0, 5.0, 3.0]), ("b", [2.0, 2.0, 9.0])):
        for k, v in enumerate(vals):
            rows.append({"model": model, "prompt_id": "p0", "prompt": "x", "style": "", "k": k, "status": "ok", "m": v})
    df = pd.DataFrame(rows)
    med = median_table(df, "m").set_index("model")
    assert med.loc["a", "median"] == 3.0 and med.loc["a", "k"] == 2
    assert med.loc["b", "median"] == 2.0 and med.loc["b", "k"] == 1  # lower index among tied 2.0s
    wins = win_rates(df, "a", "b", ["m"], method="wilson", by_style=False)
    assert wins.iloc[0].win_rate == 100.0  # a's median 3 beats b's median 2 though b has the best image
    # a failed image is left out of the median: b's 9.0 failed -> median of (2, 2) is 2
    df.loc[(df.model == "b") & (df.k == 2), ["status", "m"]] = ["failed", np.nan]
    assert median_table(df, "m").set_index("model").loc["b", "n_failed_images"] == 1


@pytest.fixture(scope="module")
def tiny_safety_checker(tmp_path_factory):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    root = tmp_path_factory.mktemp("sd_with_checker")
    cfg = CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=16, patch_size=8), projection_dim=8)
    checker = StableDiffusionSafetyChecker(cfg)
    checker.save_pretrained(root / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(root / "feature_extractor")
    return root


def test_safety_checker_share_is_counted_and_images_are_kept(tiny_safety_checker, tmp_path):
    checker = SafetyChecker.from_pretrained(tiny_safety_checker)
    for threshold, name, share in ((-2.0, "flag_all", 100.0), (2.0, "flag_none", 0.0)):
        with torch.no_grad():  # cosine - threshold > 0 for every concept (or none)
            checker.model.concept_embeds_weights.fill_(threshold)
            checker.model.special_care_embeds_weights.fill_(threshold)
        run(FakePipe(), tmp_path, name, safety_checker=checker)
        score_model(tmp_path / name, {"brightness": get_scorer("brightness")}, progress=False)
    df = load_scores(tmp_path, ["flag_all", "flag_none"])
    assert (df.loc[df.model == "flag_all", "brightness"] > 0).all()  # flagged images were NOT blacked out
    shares = nsfw_shares(df).set_index("model")
    assert shares.loc["flag_all", "nsfw_share"] == 100.0 and shares.loc["flag_none", "nsfw_share"] == 0.0
    assert shares.loc["flag_all", "n_images"] == 9
    with pytest.raises(FileNotFoundError, match="feature_extractor"):
        SafetyChecker.from_pretrained(tiny_safety_checker / "safety_checker", feature_extractor_path=tmp_path)


def test_report_tables_and_plots(tmp_path):
    run(FakePipe(shift=0.2), tmp_path, "kto")
    run(FakePipe(), tmp_path, "base")
    scorers = {"redness": get_scorer("redness"), "saturation": get_scorer("saturation")}
    for m in ("kto", "base"):
        score_model(tmp_path / m, scorers, progress=False)
    df = load_scores(tmp_path, ["kto", "base"])
    wins = win_rates(df, "kto", "base", n_bootstrap=100, min_prompts=1)  # 3 prompts: the intervals' arithmetic
    paths = write_report(tmp_path / "report", wins, mean_scores(df), nsfw_shares(df))
    text = paths["report"].read_text()
    assert "| kto vs base |" in text and "### Style: photo" in text and "Mean score" in text
    # the papers' interval beside the bootstrap one: n = every image (3 prompts x 3 images)
    overall = wins[wins["style"] == "all"].iloc[0]
    assert overall.n_images == 9 and overall.n_prompts == 3
    low, high = paper_interval(overall.win_rate / 100, 9)
    assert (overall.paper_ci_low, overall.paper_ci_high) == pytest.approx((100 * low, 100 * high))
    assert "papers' interval" in text and f"{overall.win_rate:.1f} ± {100 * (high - low) / 2:.2f}" in text
    paper = win_rates(df, "kto", "base", method="paper", min_prompts=1)
    assert paper.ci_low.tolist() == pytest.approx(paper.paper_ci_low.clip(0, 100).tolist())  # ci_* are clipped
    assert pd.read_csv(paths["win_rates"]).shape[0] == len(wins)
    plot_win_rates(wins, tmp_path / "w.png")
    plot_score_distributions(df, ["redness", "saturation"], tmp_path / "d.png")
    assert (tmp_path / "w.png").stat().st_size > 0 and (tmp_path / "d.png").stat().st_size > 0
    assert markdown_table(pd.DataFrame({"x": [1.5]}), index=False) == "| x |\n|---|\n| 1.5 |\n"
    with pytest.raises(KeyError, match="model 'sft' not in the scores"):
        win_rates(df, "sft", "base")
    with pytest.raises(FileNotFoundError, match="eval generate"):
        score_model(tmp_path / "nothing", scorers)


class DroppingPipe(FakePipe):
    """Returns no image for prompts containing "FAIL" (and fewer images than prompts for its batch)."""

    def __call__(self, prompt, generator, **kw):
        out = super().__call__(prompt, generator, **kw)
        return SimpleNamespace(images=[im for p, im in zip(prompt, out.images) if "FAIL" not in p])


def test_a_pipeline_returning_too_few_images_records_failures_not_shifted_rows(tmp_path):
    counts = run(DroppingPipe(), tmp_path, "m", batch_size=4)
    assert counts == {"ok": 6, "failed": 3, "skipped": 0}
    rows = read_manifest(tmp_path / "m")
    assert len(rows) == 9
    assert {r["prompt_id"] for r in rows if r["status"] == "failed"} == {"p1"}
    assert all("returned 0 images for 1 prompts" in r["error"] for r in rows if r["status"] == "failed")
    # every ok image is the one its own seed makes (no image slid onto another prompt's row)
    for r in rows:
        if r["status"] == "ok":
            g = torch.Generator().manual_seed(r["seed"])
            rgb = (np.clip(torch.rand(3, generator=g).numpy(), 0, 1) * 255).astype(np.uint8)
            assert (np.asarray(Image.open(tmp_path / "m" / r["file"]))[0, 0] == rgb).all()


def test_prompt_ids_must_be_unique(tmp_path):
    with pytest.raises(ValueError, match=r"unique.*\['p0'\]"):
        generate_images(FakePipe(), [Prompt("p0", "a"), Prompt("p0", "b")], tmp_path / "m", model_name="m",
                        progress=False)


def test_resume_with_other_seeds_regenerates_and_rescores(tmp_path):
    scorers = {"redness": get_scorer("redness")}
    run(FakePipe(), tmp_path, "a")  # n_per_prompt=3: seeds 10 + 3 i + k
    score_model(tmp_path / "a", scorers, progress=False)
    counts = generate_images(FakePipe(), PROMPTS, tmp_path / "a", model_name="a", n_per_prompt=2, base_seed=10,
                             progress=False)
    assert counts == {"ok": 4, "failed": 0, "skipped": 2}  # only p0's seeds 10, 11 are unchanged
    rows = {(r["prompt_id"], r["k"]): r for r in read_manifest(tmp_path / "a")}
    for i, p in enumerate(PROMPTS):
        for k in range(2):
            assert rows[(p.id, k)]["seed"] == image_seed(10, i, k, 2)
    df = score_model(tmp_path / "a", scorers, progress=False)
    for _, r in df[df["k"] < 2].iterrows():  # no stale score of the image the file held before
        image = Image.open(tmp_path / "a" / r["file"])
        assert r["redness"] == pytest.approx(float(get_scorer("redness").score([image])[0]))


def test_run_evaluation_compares_this_runs_n_images(tmp_path, monkeypatch):
    from kto_lab.eval import run as run_module
    from kto_lab.eval.run import EvalConfig, ModelSpec

    def fake_generate_all(cfg, prompts, progress=True):
        return {m.name: generate_images(FakePipe(shift=0.1 * j), prompts, tmp_path / "out" / m.name, model_name=m.name,
                                        n_per_prompt=cfg.n_per_prompt, base_seed=cfg.seed, progress=False)
                for j, m in enumerate(cfg.models)}

    monkeypatch.setattr(run_module, "generate_all", fake_generate_all)
    (tmp_path / "p.txt").write_text("a red circle\na blue square\ngreen\n")
    cfg = EvalConfig(prompts=str(tmp_path / "p.txt"), models=[ModelSpec("a", "-"), ModelSpec("b", "-")],
                     out_dir=str(tmp_path / "out"), n_per_prompt=3, n_bootstrap=50, device="cpu")
    run_module.run_evaluation(cfg, progress=False, make_plots=False)
    cfg.n_per_prompt = 2  # the k = 2 images of the first run stay in the manifests, but are not this run's
    result = run_module.run_evaluation(cfg, progress=False, make_plots=False)
    assert sorted(set(result.scores["k"])) == [0, 1]
    assert (result.means.loc[result.means["style"] == "all", "n_images"] == 6).all()


def test_plots_are_returned_titled_and_counted(svg_backend):
    """The figures come back (a notebook shows them) on the current backend, which stays selected; the
    win-rate chart has a title and the number of prompts behind each bar; names are human."""
    import matplotlib

    scores = pd.DataFrame([{"model": model, "prompt_id": f"p{i}", "prompt": "x", "style": "", "k": 0, "status": "ok",
                            "pickscore": v + i} for i in range(4) for model, v in (("kto", 1.0), ("base", 0.0))])
    wins = win_rates(scores, "kto", "base", ["pickscore"], method="wilson", by_style=False)
    fig = plot_win_rates(wins)
    assert matplotlib.get_backend() == svg_backend
    assert "Win rate of A over B" in fig.get_suptitle() and "ties count half" in fig.get_suptitle()
    assert legend_texts(fig) == ["Diffusion-KTO vs base model (n = 4 prompts)"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["PickScore"]
    assert overlapping_texts(fig) == []
    fig = plot_score_distributions(scores, ["pickscore"])
    assert matplotlib.get_backend() == svg_backend
    assert fig.axes[0].get_title() == "PickScore" and fig.get_suptitle()
    assert legend_texts(fig) == ["Diffusion-KTO (n = 4)", "base model (n = 4)"]
    assert overlapping_texts(fig) == []


def _fake_weights(root, name, content: bytes):
    """A pipeline folder (model_index.json + unet/) and a LoRA file: what the generation key fingerprints."""
    pipe = root / "pipe"
    if not pipe.exists():
        (pipe / "unet").mkdir(parents=True)
        (pipe / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "U"]}')
        (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"base weights")
    (root / name).mkdir(exist_ok=True)
    (root / name / "pytorch_lora_weights.safetensors").write_bytes(content)
    return {"pipeline": str(pipe), "denoiser": None, "lora": str(root / name)}


def test_resume_is_keyed_on_the_weights_and_sampling_settings(tmp_path, caplog):
    """issue 21, 4a: pointing a model name at another LoRA, or changing the steps or guidance, skipped every
    image and kept the old model's. Now such images are made again, saying what changed; the same weights
    elsewhere (a copy) and the same settings are still skipped."""
    run1, run2 = (_fake_weights(tmp_path, n, c) for n, c in (("run1", b"lora one"), ("run2", b"lora two")))
    out = tmp_path / "eval"
    first = run(FakePipe(), out, "kto", weights=run1)
    assert first == {"ok": 9, "failed": 0, "skipped": 0}
    assert run(FakePipe(), out, "kto", weights=run1)["skipped"] == 9
    with caplog.at_level("WARNING"):
        assert run(FakePipe(shift=0.3), out, "kto", weights=run2) == {"ok": 9, "failed": 0, "skipped": 0}
    assert re.search(r"kto: 9 image\(s\) were made with other settings \(lora weights replaced \('.*run1' -> "
                     r"'.*run2'\)\); making them again", caplog.text), caplog.text
    copy = tmp_path / "copy_of_run2"
    shutil.copytree(tmp_path / "run2", copy)
    assert run(FakePipe(), out, "kto", weights={**run2, "lora": str(copy)})["skipped"] == 9  # same bytes: same model
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert run(FakePipe(), out, "kto", weights=run2, num_inference_steps=20)["ok"] == 9
        assert run(FakePipe(), out, "kto", weights=run2, num_inference_steps=20, guidance_scale=3.0)["ok"] == 9
    assert "steps 50 -> 20" in caplog.text and "guidance_scale 7.5 -> 3.0" in caplog.text
    (tmp_path / "run2" / "pytorch_lora_weights.safetensors").write_bytes(b"lora two, trained again")
    caplog.clear()
    with caplog.at_level("WARNING"):  # the same path with other bytes
        assert run(FakePipe(), out, "kto", weights=run2, num_inference_steps=20, guidance_scale=3.0)["ok"] == 9
    assert re.search(r"lora weights changed \('.*run2' -> '.*run2'\)", caplog.text), caplog.text


def test_scores_are_keyed_on_the_image_content(tmp_path):
    """issue 21, 4a: after images were made again, the score cache (keyed on file, seed and prompt) kept the
    old images' scores. Now a regenerated image is always scored again."""
    scorers = {"redness": get_scorer("redness")}
    run1, run2 = (_fake_weights(tmp_path, n, c) for n, c in (("run1", b"lora one"), ("run2", b"lora two")))
    run(FakePipe(), tmp_path / "eval", "kto", weights=run1)
    before = score_model(tmp_path / "eval" / "kto", scorers, progress=False)
    run(FakePipe(shift=0.3), tmp_path / "eval", "kto", weights=run2)
    after = score_model(tmp_path / "eval" / "kto", scorers, progress=False)
    for _, r in after.iterrows():  # each score is the score of the image on disk now
        with Image.open(tmp_path / "eval" / "kto" / r["file"]) as image:
            assert r["redness"] == pytest.approx(float(get_scorer("redness").score([image])[0]))
    assert not np.allclose(before["redness"], after["redness"])


def test_prompt_ids_and_model_names_stay_in_their_folder(tmp_path, capsys):
    """issue 21, 4b: a prompt id ``../../../X`` (a JSONL prompt file) or ``--name ..`` wrote outside --out."""
    from kto_lab.cli import main
    from kto_lab.config import ConfigError

    with pytest.raises(ConfigError, match=r"prompt id='\.\./\.\./x' cannot name a file or folder"):
        generate_images(FakePipe(), [Prompt("../../x", "a")], tmp_path / "m", model_name="m", progress=False)
    assert not (tmp_path / "x_0.png").exists() and not any(tmp_path.rglob("*.png"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "../../../X", "text": "a cat"}\n')
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    base = ["eval", "generate", "--pipeline", str(tmp_path / "pipe"), "--out", str(tmp_path / "out")]
    assert main([*base, "--name", "m", "--prompts", str(prompts)]) == 2
    assert re.search(r"prompt id='\.\./\.\./\.\./X' cannot name a file", capsys.readouterr().err)
    prompts.write_text('{"id": "ok", "text": "a cat"}\n')
    for name in ("..", ".", "a/b"):
        assert main([*base, "--name", name, "--prompts", str(prompts)]) == 2
        assert f"--name={name!r} cannot name a file or folder" in capsys.readouterr().err


def test_disk_full_while_writing_images_is_one_line_and_keeps_what_was_written(tmp_path, monkeypatch, capsys):
    """issue 21, 7b: a full disk while ``eval generate`` wrote images was a raw traceback."""
    import errno

    import kto_lab.sd.models
    from kto_lab.cli import main

    class LoadedPipe(FakePipe):
        def to(self, device):
            return self

        def set_progress_bar_config(self, **kw):
            pass

    monkeypatch.setattr(kto_lab.sd.models, "load_pipeline", lambda *a, **k: LoadedPipe())
    real_save, saved = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        if len(saved) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    args = ["eval", "generate", "--pipeline", str(tmp_path / "pipe"), "--name", "m", "--prompts",
            str(tmp_path / "p.txt"), "--out", str(tmp_path / "out"), "-n", "2", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert re.fullmatch(r"kto-lab eval: error: no space left on the device while writing .*/out/m/images/"
                        r"text-00001_0\.png; free some space and run again \(the images already written are kept "
                        r"and skipped\)", err), err
    assert sorted(p.name for p in (tmp_path / "out" / "m" / "images").iterdir()) == ["text-00000_0.png",
                                                                                     "text-00000_1.png"]
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert main(args) == 0
    assert '"skipped": 2' in capsys.readouterr().out


def test_sd3_images_read_captions_at_the_t5_length_the_family_trains_with(tiny_sd3_path, tmp_path):
    """The SD3 family trains with 77 T5 tokens (its tower's max_length); the pipeline's own default is 256, and the
    MMDiT attends to the padding too, so an image drawn at 256 is not the trained model's. The harness draws with
    the family's length, and keys its images on it."""
    import json

    from kto_lab.sd.families import family_of_pipeline
    from kto_lab.sd.models import load_pipeline

    pipe = load_pipeline(tiny_sd3_path)
    pipe.set_progress_bar_config(disable=True)
    assert family_of_pipeline(pipe).sampling_kwargs() == {"max_sequence_length": 77}
    prompt = Prompt(id="p0", text="a red circle")
    generate_images(pipe, [prompt], tmp_path / "m", model_name="m", n_per_prompt=1, base_seed=3,
                    num_inference_steps=2, guidance_scale=1.0, height=32, width=32, progress=False)
    got = np.asarray(Image.open(tmp_path / "m" / "images" / "p0_0.png"), dtype=np.int16)

    def direct(length):
        out = pipe(prompt=[prompt.text], generator=[torch.Generator().manual_seed(image_seed(3, 0, 0, 1))],
                   num_inference_steps=2, guidance_scale=1.0, height=32, width=32, output_type="pil",
                   max_sequence_length=length)
        return np.asarray(out.images[0], dtype=np.int16)

    assert np.abs(got - direct(77)).max() == 0
    assert np.abs(direct(256) - direct(77)).max() > 0  # the length matters, so the check above can fail
    record = json.loads((tmp_path / "m" / "generation.json").read_text())
    assert [s["settings"]["call"] for s in record["settings"].values()] == [{"max_sequence_length": 77}]
