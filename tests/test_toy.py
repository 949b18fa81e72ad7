"""The toy: world, model, metrics, config errors, divergence, determinism, end to end, CLI, figures."""

import copy
import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from kto_lab.cli import main
from kto_lab.config import ConfigError
from toy import FIGURE6_METHODS, ToyConfig, ToyDivergenceError, finetune, parse_method, pretrain
from toy.data import DESIRABLE, PRETRAIN, UNDESIRABLE, make_feedback
from toy.metrics import energy_distance, region_shares, sample_metrics
from toy.model import ToyDenoiser
from toy.run import run_figure6, run_seed, summarize
from toy.sample import sample

from figure_checks import legend_texts, overlapping_texts

# Small enough for CI on a shared 2-core machine.
TINY = dict(hidden=16, emb_size=8, num_blocks=1, batch_size=64, pretrain_steps=20, steps=5,
            n_feedback=64, n_samples=200)


def test_world_matches_section_6():
    assert PRETRAIN.mean == (0.5, 0.8) and PRETRAIN.var == 0.04
    assert DESIRABLE.mean == (0.3, 0.8) and DESIRABLE.var == 0.01
    assert UNDESIRABLE.mean == (0.3, 0.6) and UNDESIRABLE.var == 0.01
    x = DESIRABLE.sample(20000, torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), torch.tensor([0.3, 0.8]), atol=0.005)
    assert torch.allclose(x.std(0), torch.tensor([0.1, 0.1]), atol=0.005)
    ref = torch.distributions.MultivariateNormal(torch.tensor([0.3, 0.8]), 0.01 * torch.eye(2))
    assert torch.allclose(DESIRABLE.log_prob(x[:10]), ref.log_prob(x[:10]), atol=1e-5)
    fb = make_feedback(5, 3)
    assert fb.labels.tolist() == [1] * 5 + [0] * 3 and fb.desirable.shape == (5, 2) and fb.undesirable.shape == (3, 2)
    with pytest.raises(ValueError, match="number of samples must be >= 1, got 0"):
        DESIRABLE.sample(0)


def test_metrics():
    g = torch.Generator().manual_seed(0)
    a, b = DESIRABLE.sample(500, g), DESIRABLE.sample(500, g)
    assert energy_distance(a, b) < 0.01 < energy_distance(a, UNDESIRABLE.sample(500, g))
    shares = region_shares(a)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["share_desirable"] > 0.6 > shares["share_undesirable"]
    m = sample_metrics(a, b, a)
    assert m["energy_to_pretrained"] == pytest.approx(0.0, abs=1e-9) and m["logp_desirable"] > m["logp_undesirable"]
    with pytest.raises(FloatingPointError, match="1 of 500 samples are not finite"):
        sample_metrics(torch.cat([a[:-1], torch.tensor([[math.nan, 0.0]])]), b)


def test_class_input_starts_as_the_unconditional_model():
    model = ToyDenoiser(hidden=16, emb_size=8)
    x, t = torch.randn(4, 2), torch.tensor([0, 5, 10, 49])
    assert torch.equal(model(x, t), model(x, t, torch.tensor([1, 0, 1, 0])))


def test_parse_method_and_unknown_names():
    assert parse_method("pretrained") == (None, None)
    assert parse_method("kto:loss_averse") == ("kto", "loss_averse")
    assert parse_method("kto") == ("kto", "kto")
    assert parse_method("dpo") == ("dpo", None)
    with pytest.raises(ConfigError, match="not one of kto, dpo, sft, csft, bce"):
        parse_method("ppo")
    with pytest.raises(ConfigError, match="known utilities: .*loss_averse"):
        parse_method("kto:greedy")
    with pytest.raises(ConfigError, match="only 'kto' takes a utility"):
        parse_method("sft:kto")


@pytest.mark.parametrize("field, value, match", [
    ("beta", 0.0, "beta=0.0 must be > 0"),
    ("beta", -2.0, "beta=-2.0"),
    ("gamma", 0.0, r"gamma=0.0 must be in \(0, 1\]"),
    ("gamma", 1.5, r"gamma=1.5 must be in \(0, 1\]"),
    ("n_samples", 0, "n_samples=0 must be an integer >= 1"),
    ("methods", ("sft", "kto:nope"), "known utilities"),
    ("methods", ("rlhf",), "known objectives|not one of"),
    ("method_overrides", {"dpo": {"hidden": 3}}, "cannot be overridden per method"),
    ("method_overrides", {"dpo": {"beta": -1.0}}, "beta=-1.0"),
])
def test_bad_config_values_are_named(field, value, match):
    with pytest.raises(ConfigError, match=match):
        ToyConfig(**{field: value}).validate()


def test_an_empty_method_override_is_no_override():
    assert ToyConfig(method_overrides={"dpo": {}}).validate().for_method("dpo").beta == 3.0  # no endless re-check


@pytest.mark.parametrize("kw, match", [
    (dict(family="sde"), r"family='sde' is not allowed; choose one of \['ddpm', 'flow'\]"),
    (dict(family="flow", beta_end=0.1), "beta_end=0.1 is a ddpm-only option, but family='flow'"),
    (dict(flow_shift=3.0), "flow_shift=3.0 is a flow-only option, but family='ddpm'"),
    (dict(flow_density="logit_normal"), "flow_density='logit_normal' is a flow-only option, but family='ddpm'"),
    (dict(family="flow", flow_density="cosmap"), "flow_density='cosmap' is not allowed"),
    (dict(family="flow", flow_shift=0.0), "flow_shift=0.0 must be > 0"),
])
def test_schedule_options_of_the_other_family_are_one_line_errors(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        ToyConfig(**kw).validate()
    assert "\n" not in str(e.value)


def test_flow_beta_outside_the_measured_range_warns_once_with_the_range():
    from toy.train import FLOW_BETA_RANGE

    low, high = FLOW_BETA_RANGE
    with pytest.warns(UserWarning, match=rf"^beta={high * 10:g} is outside \[{low:g}, {high:g}\], the range measured") as w:
        ToyConfig(family="flow", beta=high * 10).validate()  # four Diffusion-KTO methods share it: one line
    shown = warnings.formatwarning(w[0].message, w[0].category, w[0].filename, w[0].lineno)
    assert len(w) == 1 and shown.count("\n") == 1, shown  # printed as one line, no source line under it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ToyConfig(family="flow", beta=high, methods=("kto:kto", "dpo")).validate()  # DPO's own beta=300: not checked
        ToyConfig(family="flow", beta=high * 10, methods=("sft", "dpo")).validate()  # no Diffusion-KTO
        ToyConfig(beta=high * 10).validate()  # DDPM: the range is for velocity errors
        ToyConfig(family="flow", beta=high * 10, methods=("kto:loss_averse",),
                  method_overrides={"kto:loss_averse": {"beta": high}}).validate()  # the method's own beta
    with pytest.warns(UserWarning, match=rf"^method_overrides\['kto:kto'\].beta={low / 10:g} is outside"):
        ToyConfig(family="flow", methods=("kto:kto",), method_overrides={"kto:kto": {"beta": low / 10}}).validate()


def test_sampling_rejects_bad_counts():
    with pytest.raises(ValueError, match="number of samples must be an integer >= 1, got 0"):
        sample(ToyDenoiser(hidden=16, emb_size=8), ToyConfig().schedule(), 0)
    with pytest.raises(ValueError, match="steps=10: DDPM sampling walks the schedule's 50 steps"):
        sample(ToyDenoiser(hidden=16, emb_size=8), ToyConfig().schedule(), 5, steps=10)


class ExactGaussianVelocity(torch.nn.Module):
    """The exact velocity ``E[eps - x0 | x_t]`` of rectified flow for data ``N(mu, s^2 I)``:
    with ``var_t = (1 - t)^2 s^2 + t^2``, ``v = (t - (1 - t) s^2) / var_t * (x_t - (1 - t) mu) - mu``."""

    def __init__(self, schedule, mu, s):
        super().__init__()
        self.schedule, self.mu, self.s2 = schedule, torch.tensor(mu), s * s

    def forward(self, x_t, t, cond=None):
        t = self.schedule.noise_level(t, x_t)
        var = (1 - t) ** 2 * self.s2 + t**2
        return (t - (1 - t) * self.s2) / var * (x_t - (1 - t) * self.mu) - self.mu


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_ode_sampler_with_the_exact_velocity_draws_the_data(shift):
    """Integrating the exact field from t = 1 to 0 turns N(0, I) into the data Gaussian, so the
    sampler's direction, step sizes and time units are right; too few steps visibly shrink it."""
    schedule = ToyConfig(family="flow", flow_shift=shift).validate().schedule()
    model = ExactGaussianVelocity(schedule, DESIRABLE.mean, DESIRABLE.std)
    x = sample(model, schedule, 20000, generator=torch.Generator().manual_seed(0), steps=1000)
    assert torch.allclose(x.mean(0), torch.tensor(DESIRABLE.mean), atol=0.005)
    assert torch.allclose(x.std(0), torch.full((2,), DESIRABLE.std), rtol=0.02)
    few = sample(model, schedule, 20000, generator=torch.Generator().manual_seed(0), steps=10)
    assert (few.std(0) < 0.7 * DESIRABLE.std).all()


def test_the_toys_euler_steps_keep_the_spread_of_p_d():
    """ToyConfig.flow_sample_steps (200) keeps P_d's standard deviation within 3 % with the exact
    velocity; 50 steps (the DDPM chain's length) lose 8 %."""
    cfg = ToyConfig(family="flow").validate()
    schedule = cfg.schedule()
    model = ExactGaussianVelocity(schedule, DESIRABLE.mean, DESIRABLE.std)
    spread = {n: sample(model, schedule, 20000, generator=torch.Generator().manual_seed(0), steps=n).std(0)
              for n in (cfg.flow_sample_steps, 50)}
    assert torch.allclose(spread[cfg.flow_sample_steps], torch.full((2,), DESIRABLE.std), rtol=0.03)
    assert (spread[50] < 0.93 * DESIRABLE.std).all()


@pytest.mark.parametrize("family", ["ddpm", "flow"])
def test_end_to_end_every_method_and_deterministic_under_a_seed(family):
    cfg = ToyConfig(**TINY, family=family).validate()
    a = run_seed(cfg, seed=3)
    b = run_seed(cfg, seed=3)
    assert list(a.metrics) == list(FIGURE6_METHODS)
    for method in FIGURE6_METHODS:
        assert a.samples[method].shape == (200, 2)
        assert torch.equal(a.samples[method], b.samples[method]), method
        assert a.metrics[method] == b.metrics[method]
        assert all(math.isfinite(v) for v in a.metrics[method].values())
    assert a.metrics["pretrained"]["param_change"] == 0.0 and a.metrics["kto:kto"]["param_change"] > 0
    c = run_seed(cfg, seed=4, methods=["pretrained"])
    assert not torch.equal(a.samples["pretrained"], c.samples["pretrained"])


@pytest.mark.parametrize("family", ["ddpm", "flow"])
def test_kto_moves_mass_from_undesirable_to_desirable(family):
    """A short real run: Diffusion-KTO raises the log-density of its samples under P_d relative
    to P_u compared with the pretrained model (the direction of Figure 6), under DDPM and flow matching."""
    cfg = ToyConfig(family=family, hidden=32, emb_size=16, batch_size=256, pretrain_steps=300, steps=150, lr=1e-3,
                    n_feedback=256, n_samples=1000, methods=("pretrained", "kto:kto")).validate()
    r = run_seed(cfg, seed=0)
    gap = {m: r.metrics[m]["logp_desirable"] - r.metrics[m]["logp_undesirable"] for m in r.metrics}
    assert gap["kto:kto"] > gap["pretrained"] + 0.5, gap
    assert r.metrics["kto:kto"]["share_desirable"] > r.metrics["pretrained"]["share_desirable"]


def test_sft_trains_on_desirable_points_only():
    """SFT's batches hold desirable points only (the paper's baseline, sec. 5), whatever gamma says."""
    cfg = ToyConfig(**TINY, gamma=0.5).validate()
    feedback = make_feedback(64, 64, torch.Generator().manual_seed(0))
    history = finetune(cfg, "sft", pretrain(cfg), feedback, log_every=1).history
    assert [row["sft/desirable_in_batch"] for row in history] == [cfg.batch_size] * cfg.steps


def test_divergence_stops_with_the_method_and_step():
    cfg = ToyConfig(**{**TINY, "steps": 300, "lr": 0.05, "divergence_factor": 3.0},
                    method_overrides={}).validate()
    model = pretrain(cfg)
    feedback = make_feedback(64, 64, torch.Generator().manual_seed(0))
    with pytest.raises(ToyDivergenceError, match=r"'kto:risk_seeking' step \d+ .*diverged.*lower beta or lr"):
        finetune(cfg, "kto:risk_seeking", model, feedback)
    feedback.x[0, 0] = math.nan
    with pytest.raises(ToyDivergenceError, match=r"non-finite loss \(nan\) at toy fine-tune 'sft' step 0"):
        finetune(dataclass_replace(cfg, gamma=1.0), "sft", model, feedback)


def test_finetune_rejects_bad_log_every_by_value():
    cfg = ToyConfig(**TINY).validate()
    feedback = make_feedback(8, 8, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="log_every must be an integer >= 1, got 0"):
        finetune(cfg, "sft", ToyDenoiser(hidden=16, emb_size=8, num_blocks=1), feedback, log_every=0)


def test_panel_labels_accept_no_method_overrides():
    from toy.figures import _label

    assert _label("dpo", ToyConfig(method_overrides=None).validate()) == "Diffusion-DPO"
    assert _label("dpo", ToyConfig()) == "Diffusion-DPO (β = 300)"
    assert _label("kto:risk_seeking", ToyConfig()) == "Diffusion-KTO (risk-seeking U) (λ_U = 0.1)"


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


@pytest.fixture(scope="module")
def tiny_figure6():
    return run_figure6(ToyConfig(**{**TINY, "methods": ("pretrained", "sft", "kto:kto")}), seeds=2, progress=False)


def test_figure6_python_api_writes_the_files(tmp_path, tiny_figure6):
    from toy import write_figure6

    cfg, result = tiny_figure6.config, tiny_figure6
    paths = write_figure6(result, tmp_path, command="test")
    metrics = json.loads(paths["json"].read_text())
    assert list(metrics) == ["pretrained", "sft", "kto:kto"]
    assert len(metrics["sft"]["share_desirable"]["values"]) == 2 and metrics["sft"]["share_desirable"]["sd"] >= 0
    assert (tmp_path / "figure6.png").stat().st_size > 10000
    table = (tmp_path / "figure6_metrics.md").read_text()
    assert "| kto:kto |" in table and "data: P_d" in table and " ± " in table
    with pytest.raises(ValueError, match="seeds must be an integer >= 1, got 0"):
        run_figure6(cfg, seeds=0)

    from toy.figures import redraw_figure6  # the figure again from those files, no training

    before = paths["png"].read_bytes()
    paths["png"].unlink()
    assert redraw_figure6(tmp_path) == paths["png"] and paths["png"].read_bytes() == before
    assert main(["toy", "figure6", "--out", str(tmp_path / "none"), "--redraw"]) == 2  # nothing saved there: one line


def test_plotting_modules_choose_no_backend():
    """A notebook's inline backend survives importing them (tested in a fresh interpreter)."""
    code = ("import matplotlib; matplotlib.use('svg'); import kto_lab.plotting, kto_lab.eval.report, "
            "kto_lab.synthetic.figures, toy.figures; print(matplotlib.get_backend())")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"


def test_figure6_reads_at_a_glance(tiny_figure6, svg_backend):
    """Returned on the current backend (which stays), every bar in view (a mean log-density of -17.7 is not
    clipped at -8), human names in the legends, titles everywhere, no colliding labels."""
    import matplotlib

    from toy.figures import plot_figure6
    from toy.metrics import METRICS

    result = copy.deepcopy(tiny_figure6)
    result.summary["sft"]["logp_undesirable"].update(mean=-17.7, sd=5.5)
    fig = plot_figure6(result)
    assert matplotlib.get_backend() == svg_backend
    logp = next(ax for ax in fig.get_axes() if "log-density" in ax.get_xlabel())
    assert logp.get_xlim()[0] <= -17.7 - 5.5
    texts = legend_texts(fig)
    assert "share in P_d's region" in texts and not set(texts) & set(METRICS)
    assert all(ax.get_title() for ax in fig.get_axes() if ax.axison) and "Figure 6" in fig.get_suptitle()
    assert overlapping_texts(fig) == []


def test_one_seed_table_shows_no_spread():
    from toy.figures import metrics_table

    one = summarize([{"sft": {"share_desirable": 0.5}}])
    assert metrics_table(one, references=False) == [{"method": "sft", "share_desirable": "0.500"}]
    two = summarize([{"sft": {"share_desirable": 0.5}}, {"sft": {"share_desirable": 0.7}}])
    assert metrics_table(two, references=False) == [{"method": "sft", "share_desirable": "0.600 ± 0.141"}]


def test_ablation_figure_names_what_it_varies(svg_backend):
    import matplotlib

    from toy.figures import ABLATION_METRICS, plot_ablations

    def summary(x):
        return summarize([{"m": {k: x for k in ABLATION_METRICS}}, {"m": {k: x + 0.1 for k in ABLATION_METRICS}}])["m"]

    result = {"beta": {"1.0": summary(0.1), "3.0": summary(0.2)}, "gamma": {"0.8": summary(0.3), "1.0": summary(0.4)},
              "utility": {"kto": summary(0.5), "loss_averse": summary(0.6), "risk_seeking": {"diverged": "step 3"}}}
    fig = plot_ablations(result, config=ToyConfig())
    assert matplotlib.get_backend() == svg_backend
    assert "one setting changed at a time" in fig.get_suptitle() and "2 seeds" in fig.get_suptitle()
    labels = [ax.get_ylabel() for ax in fig.get_axes()] + [ax.get_xlabel() for ax in fig.get_axes()]
    assert not set(labels) & {*ABLATION_METRICS, "beta", "gamma", "utility"}
    titles = [ax.get_title() for ax in fig.get_axes() if ax.get_title()]
    assert len(titles) == 3 and "diverged: risk-seeking" in titles[2]
    ticks = [t.get_text() for t in fig.get_axes()[2].get_xticklabels()]
    assert ticks == ["Kahneman-Tversky", "loss-averse"]
    assert overlapping_texts(fig) == []


def test_cli_figure6_figure9_ablations(tmp_path):
    tiny = [f"--set={k}={v}" for k, v in TINY.items() if k not in ("steps", "pretrain_steps", "n_samples")]
    assert main(["toy", "figure9", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "figure9.png").is_file()
    assert main(["toy", "figure6", "--out", str(tmp_path), "--seeds", "1", "--steps", "2", "--pretrain-steps", "3",
                 "--samples", "50", "--set=methods=[pretrained,csft,dpo]", *tiny]) == 0
    assert list(json.loads((tmp_path / "figure6_metrics.json").read_text())) == ["pretrained", "csft", "dpo"]
    assert main(["toy", "ablations", "--out", str(tmp_path), "--seeds", "1", "--steps", "2", "--pretrain-steps", "3",
                 "--set=n_samples=50", *tiny]) == 0
    abl = json.loads((tmp_path / "ablation_metrics.json").read_text())
    assert set(abl) >= {"beta", "gamma", "utility"} and "3.0" in abl["beta"] and "kto" in abl["utility"]
    assert (tmp_path / "ablation.png").is_file()
    assert main(["toy", "frontier", "--out", str(tmp_path / "frontier"), "--seeds", "1", "--steps", "2",
                 "--pretrain-steps", "3", "--set=n_samples=50", *tiny]) == 0
    assert {p.name for p in (tmp_path / "frontier").iterdir()} >= {"toy_frontier.png", "toy_frontier_summary.csv"}


def test_cli_flow_family_writes_its_own_files(tmp_path):
    tiny = [f"--set={k}={v}" for k, v in TINY.items() if k not in ("steps", "pretrain_steps", "n_samples")]
    small = ["--seeds", "1", "--steps", "2", "--pretrain-steps", "3", *tiny]
    assert main(["toy", "figure6", "--out", str(tmp_path), "--family", "flow", "--samples", "50",
                 "--set=methods=[pretrained,kto:kto]", *small]) == 0
    assert list(json.loads((tmp_path / "figure6_flow_metrics.json").read_text())) == ["pretrained", "kto:kto"]
    assert json.loads((tmp_path / "figure6_flow_run.json").read_text())["config"]["family"] == "flow"
    assert (tmp_path / "figure6_flow.png").is_file() and not (tmp_path / "figure6.png").exists()
    assert main(["toy", "ablations", "--out", str(tmp_path), "--family", "flow", "--betas", "0.5", "2",
                 "--set=n_samples=50", *small]) == 0
    abl = json.loads((tmp_path / "ablation_flow_metrics.json").read_text())
    assert list(abl["beta"]) == ["0.5", "2.0"] and abl["_run"]["config"]["family"] == "flow"


@pytest.mark.parametrize("args, match", [
    (["--set", "gamma=0"], r"gamma=0.0 must be in \(0, 1\]"),
    (["--set", "beta=-1"], "beta=-1.0 must be > 0"),
    (["--samples", "0"], "n_samples=0 must be an integer >= 1"),
    (["--seeds", "0"], "--seeds=0 must be >= 1"),
    (["--set", "methods=[kto:nope]"], "known utilities"),
    (["--set", "betta=3"], r"unknown config key\(s\) \['betta'\].*'beta'"),
    (["--family", "sde"], r"family='sde' is not allowed; choose one of \['ddpm', 'flow'\]"),
    (["--family", "flow", "--set", "beta_end=0.1"], "beta_end=0.1 is a ddpm-only option, but family='flow'"),
])
def test_cli_bad_input_fails_before_training(tmp_path, capsys, args, match):
    assert main(["toy", "figure6", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(match, err) and err.startswith("kto-lab toy: error:") and "Traceback" not in err
    assert not (tmp_path / "figure6.png").exists()


def test_frontier_sweeps_every_method_and_writes_its_files(tmp_path):
    import pandas as pd

    from toy.frontier import run_frontier, write_frontier

    cfg = ToyConfig(**TINY).validate()
    knobs = {"kto:kto": ("beta", (1.0, 3.0)), "sft": ("lr", (1e-4, 1e-3))}
    rows = run_frontier(cfg, seeds=2, knobs=knobs, progress=False)
    assert len(rows) == 2 * (1 + 4) and set(rows.method) == {"pretrained", "kto:kto", "sft"}
    assert (rows[rows.method == "pretrained"].energy_to_pretrained.abs() < 1e-9).all()
    paths = write_frontier(rows, tmp_path, command="test", config=cfg)
    summary = pd.read_csv(paths["summary"])
    assert len(summary) == 4 and (summary.n_seeds == 2).all() and paths["png"].stat().st_size > 0


def test_figure6_scatters_name_their_axes_and_figure9_says_z_ref(tiny_figure6, svg_backend):
    from figure_checks import drawn_texts

    from toy.figures import plot_figure6, plot_figure9

    scatters = [ax for ax in plot_figure6(tiny_figure6).get_axes() if ax.get_aspect() == 1.0]  # the sample panels
    assert len(scatters) == 3 and {(ax.get_xlabel(), ax.get_ylabel()) for ax in scatters} == {("x₁", "x₂")}
    texts = " ".join(t.get_text() for t in drawn_texts(plot_figure9()))
    assert "z_ref" in texts and "Q_ref" not in texts  # the project's name of the reference point


def test_committed_toy_frontier_has_no_colliding_point_labels(svg_backend):
    """Drawn from the committed results (figures/toy_frontier.csv), as `kto-lab toy frontier --redraw` does."""
    import pandas as pd

    from figure_checks import colliding_point_labels, overlapping_texts
    from toy.frontier import frontier_summary, plot_toy_frontier

    rows = pd.read_csv(Path(__file__).resolve().parents[1] / "figures" / "toy_frontier.csv")
    fig = plot_toy_frontier(*frontier_summary(rows))
    assert colliding_point_labels(fig) == [] and overlapping_texts(fig) == []
    assert len([t for ax in fig.get_axes() for t in ax.texts]) >= 40  # every setting still labelled
