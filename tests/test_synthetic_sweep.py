"""Sweeps of the shapes world: data regimes, frontier helpers, and a tiny resumable sweep end to end."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kto_lab.eval.frontier import pareto_mask, summarize_over_seeds
from kto_lab.synthetic.regimes import REGIMES, Regime, pairs_from_labels, regime_data
from kto_lab.synthetic.shapes import make_dataset
from kto_lab.synthetic.users import get_user, label_pool

BASE = Path(__file__).resolve().parents[1] / "figures" / "synthetic" / "base" / "pipeline"


@pytest.fixture(scope="module")
def pool():
    return label_pool(make_dataset(100, renders_per_caption=2, seed=1), get_user("red"))  # 400 images


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_per_image_regime_has_the_share_and_pairs_from_its_labels(pool, share):
    data = regime_data(pool, Regime("x", desirable_share=share), pool_size=120, seed=0)
    assert data.counts()["images"] == 120 and data.labels.sum() == round(share * 120)
    seen = [i for p in data.pairs for i in p]
    assert len(seen) == len(set(seen))  # each image in at most one pair
    for w, l in data.pairs:
        assert data.captions[w] == data.captions[l] and data.labels[w] == 1 and data.labels[l] == 0
    # noise-free labels are the user's: liked images score above every disliked one
    assert data.scores[data.labels == 1].min() > data.scores[data.labels == 0].max()
    with pytest.raises(ValueError, match="needs .* images but the user's pool has"):
        regime_data(pool, Regime("x", desirable_share=share), pool_size=1000)


def test_label_noise_flips_that_share_of_labels_and_the_pairs_follow(pool):
    clean = regime_data(pool, REGIMES["balanced"], pool_size=200, seed=3)
    noisy = regime_data(pool, REGIMES["noise30"], pool_size=200, seed=3)
    assert np.array_equal(clean.scores, noisy.scores)  # the same images (same draw)
    flipped = (clean.labels != noisy.labels).mean()
    assert 0.2 < flipped < 0.4
    assert all(noisy.labels[w] == 1 and noisy.labels[l] == 0 for w, l in noisy.pairs)


def test_judgments_regime_labels_images_as_the_pickapic_conversion(pool):
    data = regime_data(pool, REGIMES["judgments"], pool_size=200, seed=0)
    assert len(data.pairs) == 100
    wins = {}
    for w, l in data.pairs:
        assert data.captions[w] == data.captions[l] and data.scores[w] > data.scores[l]  # the user's choice
        wins.setdefault(w, [0, 0])[0] += 1
        wins.setdefault(l, [0, 0])[1] += 1
    assert sorted(wins) == list(range(len(data.labels)))  # every image was compared
    assert [data.labels[i] for i in sorted(wins)] == [int(wins[i][0] >= 1) for i in sorted(wins)]  # at least once


def test_pairs_from_labels_match_within_a_caption():
    assert pairs_from_labels(np.array([0, 0, 0, 1, 1]), np.array([1, 0, 0, 1, 1])) == [(0, 1)]


def test_pareto_mask_and_summary_over_seeds():
    assert pareto_mask([1, 2, 3, 2], [3, 2, 1, 1]).tolist() == [True, True, True, False]
    assert pareto_mask([1, 2], [1, 1], maximize_x=False).tolist() == [True, False]
    df = pd.DataFrame({"method": ["a"] * 3 + ["b"], "knob": [1.0] * 4, "seed": [0, 1, 2, 0], "m": [1.0, 2.0, 3.0, 5.0]})
    s = summarize_over_seeds(df, ["method", "knob"], ["m"]).set_index("method")
    assert s.loc["a", "n_seeds"] == 3 and s.loc["a", "m"] == 2.0
    assert s.loc["a", "m_high"] - 2.0 == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)  # t_{2, 0.975}
    assert s.loc["b", "n_seeds"] == 1 and np.isnan(s.loc["b", "m_low"])


@pytest.mark.slow
def test_tiny_sweep_runs_resumes_and_reports(tmp_path):
    """Both plans at toy size from the committed base: every cell file, the skip on a rerun, the report."""
    if not (BASE / "model_index.json").is_file():
        pytest.fail(f"the committed base pipeline is missing: {BASE}")
    from kto_lab.synthetic.sweep import SweepConfig, load_cells, run_sweep
    from kto_lab.synthetic.sweep_report import write_report

    cfg = SweepConfig(n_captions=60, pool_size=80, steps=2, eval_every=1, n_last=2, n_eval_prompts=2, batch_size=4,
                      warmup_steps=1, seeds=[0], kto_betas=[1000.0], dpo_betas=[1000.0], preference_learning_rates=[],
                      learning_rates=[1e-4], spin_iterations=1, regime_kto=[[1000.0, 1e-4]], regime_dpo=[[1000.0, 1e-4]])
    out, logs = tmp_path / "sweep", []
    run_sweep("frontier", BASE, out, cfg, log=logs.append)
    run_sweep("regimes", BASE, out, cfg, log=logs.append)
    cells = list(load_cells(out))
    assert len(cells) == 8 + 10  # frontier: 8 settings; regimes: 6 x 2, the balanced two shared
    kto = next(c for c in cells if c["name"] == "balanced_kto_beta1000_lr0.0001_s0")
    assert kto["final_steps"] == [1, 2] and set(kto["final"]) == {"score", "fidelity", "fidelity_all", "distance"}
    assert len(kto["per_image"]["2"]["score"]) == 4 and kto["final"]["distance"] > 0
    logs.clear()
    run_sweep("regimes", BASE, out, cfg, log=logs.append)
    assert logs == ["12 of 12 cells were already done in " + str(out)]
    with pytest.raises(ValueError, match="holds cells of another world"):  # a ConfigError
        run_sweep("regimes", BASE, out, SweepConfig(steps=3, eval_every=1, n_last=2))

    paths = {p.name for p in write_report(out, tmp_path / "report")}
    assert {"frontier.png", "regimes.png", "comparison.md", "regimes.md", "cells.csv"} <= paths
    regimes = pd.read_csv(tmp_path / "report" / "regimes.csv")
    assert list(regimes.regime) == list(REGIMES) and (regimes.n_seeds == 1).all()
    assert ((0 <= regimes.win_score) & (regimes.win_score <= 1)).all()
    assert "| Diffusion-KTO | 1 |" in (tmp_path / "report" / "comparison.md").read_text()
    assert json.loads((tmp_path / "report" / "world.json").read_text())["pool_size"] == 80


@pytest.fixture
def no_training(monkeypatch):
    """Stands in for a cell's training: records which cells ran (and writes their result file)."""
    from kto_lab.synthetic import sweep

    ran = []

    def fake_run_cell(cell, cfg, base_dir, out, image_size=16, progress=False):
        ran.append(cell.name)
        result = {"cell": {}, "final": {k: 0.0 for k in ("score", "fidelity", "distance")}, "per_image": {}}
        (out / "cells").mkdir(exist_ok=True)
        (out / "cells" / f"{cell.name}.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(sweep, "run_cell", fake_run_cell)
    return ran


def test_sweep_errors_are_one_line_before_any_training(tmp_path, tiny_sd_path, no_training, capsys):
    """issue 21, 4b/7a/7b: a changed world, another --base (the world file did not record it: cells of two
    base models were mixed), a too-large n_last and seeds=[] each end in one line, exit 2, before training."""
    from kto_lab.cli import main

    out = tmp_path / "sweep"
    small = ["sweep.steps=2", "sweep.eval_every=1", "sweep.n_last=1", "sweep.seeds=[0]", "sweep.kto_betas=[1000]",
             "sweep.dpo_betas=[]", "sweep.preference_learning_rates=[]", "sweep.learning_rates=[]"]
    sweep = ["synthetic", "sweep", "--plan", "frontier", "--out", str(out)]

    def one_line(argv, pattern):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(pattern, err), err

    assert main([*sweep, "--base", str(BASE), *small]) == 0
    capsys.readouterr()
    n = len(no_training)
    one_line([*sweep, "--base", str(tiny_sd_path), *small],
             r"holds cells of another world \(base: '.*figures/synthetic/base/pipeline \(\w{12}\)' there, '.*tiny_sd.* "
             r"\(\w{12}\)' here\); use another --out")
    one_line([*sweep, "--base", str(BASE), *small, "sweep.pool_size=100"],
             r"another world \(pool_size: 2000 there, 100 here\)")
    one_line([*sweep, "--base", str(BASE), *small, "sweep.n_last=5"], r"sweep\.n_last=5 checkpoints every")
    one_line([*sweep, "--base", str(BASE), *small, "sweep.seeds=[]"], r"sweep\.seeds=\[\] is empty")
    assert len(no_training) == n


def test_a_truncated_cell_is_run_again_and_a_report_names_it(tmp_path, no_training, capsys):
    """issue 21, 7a: a truncated cell file counted as done (and the report died with JSONDecodeError)."""
    from kto_lab.cli import main
    from kto_lab.synthetic.sweep import SweepConfig, plan_cells, run_sweep

    cfg = SweepConfig(steps=2, eval_every=1, n_last=1, seeds=[0], kto_betas=[1000.0], dpo_betas=[],
                      preference_learning_rates=[], learning_rates=[])
    out, logs = tmp_path / "sweep", []
    run_sweep("frontier", BASE, out, cfg, log=logs.append)
    cells = [c.name for c in plan_cells("frontier", cfg)]
    assert no_training == cells
    cut = out / "cells" / f"{cells[0]}.json"
    cut.write_text(cut.read_text()[:20])
    assert main(["synthetic", "sweep-report", "--run", str(out), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"kto-lab synthetic: error: .*{cells[0]}\.json is truncated or not a sweep cell's result; "
                        r"delete it and run the sweep again to redo that cell", err), err
    logs.clear()
    run_sweep("frontier", BASE, out, cfg, log=logs.append)
    assert no_training == cells + [cells[0]]
    assert f"[1/{len(cells)}] {cells[0]}: {cut} is truncated or not a cell's result; running it again" in logs
    world = json.loads((out / "world.json").read_text())  # an earlier kto_lab's world.json, without the base
    del world["base"], world["base_path"]
    (out / "world.json").write_text(json.dumps(world))
    logs.clear()
    run_sweep("frontier", BASE, out, cfg, log=logs.append)
    assert any("does not record the base model" in line for line in logs)
    assert json.loads((out / "world.json").read_text())["base_path"] == str(BASE)
