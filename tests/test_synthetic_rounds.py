"""The rounds study in the shapes world (kto-lab synthetic rounds / rounds-report), tiny: 2 objectives x
(offline, 2 rounds) x 1 seed from the committed base, then every table and the figure."""

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "figures" / "synthetic" / "base" / "pipeline"
TINY = ["study.objectives=[kto,bce]", "study.budgets=[20]", "study.round_counts=[1,2]", "study.seeds=[0]",
        "study.images_per_prompt=5", "study.steps=2", "study.batch_size=4", "study.warmup_steps=0",
        "study.n_eval_prompts=3", "study.n_calibration_prompts=4", "study.inference_steps=2"]


@pytest.mark.slow
def test_rounds_study_and_report(tmp_path, capsys):
    from kto_lab.cli import main

    out = tmp_path / "study"
    assert main(["synthetic", "rounds", "--base", str(BASE), "--out", str(out), "--quiet", *TINY]) == 0
    cells = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert cells == ["bce_b20_r1_s0.json", "bce_b20_r2_s0.json", "kto_b20_r1_s0.json", "kto_b20_r2_s0.json"]
    cell = json.loads((out / "cells" / "kto_b20_r2_s0.json").read_text())
    assert [r["labels_spent"] for r in cell["rows"]] == [0, 10, 20]
    user = json.loads((out / "user.json").read_text())
    assert all(r["threshold"] == user["threshold"] for r in cell["rows"][1:])  # one bar for the whole study
    assert len(cell["per_image"]["2"]["score"]) == 6  # 3 held-out captions x 2 images
    offline = json.loads((out / "cells" / "kto_b20_r1_s0.json").read_text())
    assert offline["per_image"]["0"] == cell["per_image"]["0"]  # the same base images in every cell
    stamp = (out / "cells" / "kto_b20_r2_s0.json").stat().st_mtime_ns
    assert main(["synthetic", "rounds", "--base", str(BASE), "--out", str(out), "--quiet", *TINY]) == 0
    assert (out / "cells" / "kto_b20_r2_s0.json").stat().st_mtime_ns == stamp  # finished cells are skipped
    assert main(["synthetic", "rounds", "--base", str(BASE), "--out", str(out), "--quiet", *TINY, "study.steps=4"]) == 2
    assert "holds cells of another study (steps: 2 there, 4 here)" in capsys.readouterr().err
    figures = tmp_path / "figures"
    assert main(["synthetic", "rounds-report", "--run", str(out), "--out", str(figures)]) == 0
    for name in ("final.md", "rounds_vs_offline.md", "head_to_head.md", "per_round.md", "cells.csv", "rounds.png"):
        assert (figures / name).stat().st_size > 0, name
    vs = (figures / "rounds_vs_offline.md").read_text()
    assert "| Diffusion-KTO | 20 | 2 rounds | 1 |" in vs and "| BCE | 20 | 2 rounds | 1 |" in vs
    assert "Diffusion-KTO vs BCE" in (figures / "head_to_head.md").read_text()


def test_study_budgets_must_divide_into_rounds():
    from kto_lab.config import ConfigError
    from kto_lab.synthetic.rounds_study import RoundsStudyConfig

    with pytest.raises(ConfigError, match="budget 500 in 3 round"):
        RoundsStudyConfig(round_counts=[1, 3]).validate()


BASE_FLOW = REPO / "figures" / "synthetic" / "base_flow" / "pipeline"


@pytest.mark.parametrize("base, sampler", [(BASE, "DDIMScheduler"), (BASE_FLOW, "FlowMatchEulerDiscreteScheduler")],
                         ids=["ddpm", "flow"])
def test_a_cell_draws_its_images_as_the_calibration_does_with_the_worlds_sampler(base, sampler, tmp_path):
    """The user's bar is set on images of kto_lab.synthetic.evaluate.sample; a cell's labeling and held-out images
    come from the rounds' generator (the evaluation harness). Both must draw the world with its own sampler (the
    flow world was drawn with DDIM) and the family's text length, so the same seed gives the same image."""
    from PIL import Image

    from kto_lab.loop import Rounds
    from kto_lab.synthetic.evaluate import make_pipeline, sample, world_sampler
    from kto_lab.synthetic.rounds_study import Cell, RoundsStudyConfig, rounds_config

    assert world_sampler(base) == sampler
    cfg = RoundsStudyConfig(objectives=["kto"], budgets=[10], round_counts=[1], seeds=[0], images_per_prompt=5,
                            steps=2, n_eval_prompts=2, inference_steps=2).validate()
    rc = rounds_config(Cell("kto", 10, 1, 0), cfg, base, tmp_path, threshold=0.5)
    assert rc["generate"]["sampler"] == sampler
    from kto_lab.eval.scorers import get_scorer
    from kto_lab.synthetic.evaluate import FidelityScorer

    r = Rounds(rc, scorers={"redness": get_scorer("redness"), "fidelity": FidelityScorer()}, log=lambda s: None)
    assert type(r.pipeline(0).scheduler).__name__ == sampler
    prompts = r.round_prompts(1)[:1]
    r._generate(0, prompts, tmp_path / "drawn", 2, base_seed=7)
    from kto_lab.synthetic.evaluate import eval_set

    caps, seeds = eval_set([p.text for p in prompts], 2, base_seed=7)
    expected = np.round(sample(make_pipeline(base), caps, seeds, steps=2) * 255)
    for k in range(2):
        got = np.asarray(Image.open(tmp_path / "drawn" / "images" / f"{prompts[0].id}_{k}.png"), dtype=np.float64)
        assert np.abs(got.transpose(2, 0, 1) - expected[k]).max() <= 1.0  # PNG rounding only


def test_a_study_directory_refuses_another_worlds_base(tmp_path):
    from kto_lab.config import ConfigError
    from kto_lab.synthetic.rounds_study import RoundsStudyConfig, _check_same_world

    cfg = RoundsStudyConfig()
    _check_same_world(tmp_path, cfg, BASE)
    _check_same_world(tmp_path, cfg, BASE)
    with pytest.raises(ConfigError, match="sampler: 'DDIMScheduler' there, 'FlowMatchEulerDiscreteScheduler' here"):
        _check_same_world(tmp_path, cfg, BASE_FLOW)
