"""CI smoke version of the synthetic-user experiment (issue 5): KTO toward red really learns.

Starts from the base pipeline trained from scratch and committed under
``figures/synthetic/base/pipeline`` (``kto-lab synthetic base``, ~4 MB). Fine-tunes it with
Diffusion-KTO on the red user's feedback for a few dozen steps through the SD trainer, then
asserts on fresh generations (fixed prompts and seeds):

* redness rises by far more than seed noise (the spread of the base model's mean redness over
  independent seed sets) -- at least ``RISE_OVER_NOISE`` times it, and at least ``MIN_RISE``;
* prompt fidelity stays within ``FIDELITY_BOUND`` of the base model's.
"""

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "figures" / "synthetic" / "base" / "pipeline"

RISE_OVER_NOISE = 5.0
MIN_RISE = 0.02  # redness units (mean R minus mean RGB, in [0, 1] pixels)
FIDELITY_BOUND = 0.15  # the aligned model may lose at most this much fidelity (share of attributes)


@pytest.mark.slow
def test_kto_toward_red_raises_redness_far_outside_seed_noise(tmp_path):
    if not (BASE / "model_index.json").is_file():
        pytest.fail(f"the committed base pipeline is missing: {BASE} (make it with `kto-lab synthetic base`)")
    from kto_lab.synthetic.evaluate import eval_set, make_pipeline, measure, sample
    from kto_lab.synthetic.experiment import AlignConfig, CurveRecorder, align_one, write_feedback
    from kto_lab.synthetic.shapes import eval_captions
    from kto_lab.synthetic.users import get_user
    from kto_lab.sd.components import load_denoiser
    from kto_lab.synthetic.base import FAMILY

    user = get_user("red")
    cfg = AlignConfig(user="red", methods=["kto"], n_captions=200, renders_per_caption=2, steps=100, batch_size=16,
                      eval_every=100, n_curve_prompts=8).validate()
    feedback = write_feedback(BASE, tmp_path, cfg)
    curve = CurveRecorder(BASE, user, cfg.n_curve_prompts, 16)
    unet_dir = align_one("kto", BASE, tmp_path, feedback, cfg, curve)

    caps, seeds = eval_set(eval_captions(64, seed=2024), 2)
    base_pipe = make_pipeline(BASE)
    base_runs = [measure(sample(base_pipe, caps, [s + 10_000 * r for s in seeds]), caps, user) for r in range(4)]
    aligned = measure(sample(make_pipeline(BASE, load_denoiser(unet_dir, FAMILY)), caps, seeds), caps, user)

    base_red = np.array([m.score for m in base_runs])
    noise = float(base_red.std(ddof=1))
    rise = aligned.score - float(base_red[0])  # same seeds as the aligned model's images
    report = {"base_redness": base_red.tolist(), "seed_noise_std": noise, "aligned_redness": aligned.score,
              "rise": rise, "base_fidelity": base_runs[0].fidelity, "aligned_fidelity": aligned.fidelity,
              "curve": curve.rows}
    print(json.dumps(report, indent=1))
    assert rise > MIN_RISE, report
    assert rise > RISE_OVER_NOISE * noise, report
    assert aligned.fidelity >= base_runs[0].fidelity - FIDELITY_BOUND, report
