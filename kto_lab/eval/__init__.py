"""Evaluation (Diffusion-KTO sec. 5, appendices A.2, B, F): scorers, generation, win-rate protocol.

    scorers        Scorer interface, registry (get_scorer), programmatic scorers (redness, ...)
    model_scorers  PickScore, CLIP, LAION aesthetic, HPS v2, ImageReward from local weights
    prompts        PartiPrompts, HPS v2, Pick-a-Pic, plain-text prompt sets
    generate       N images per prompt with shared seeds, resumable, manifest.jsonl
    stats          median-of-N, win rate with CI, mean with t-CI
    protocol       scoring, median tables, win rates, mean scores, NSFW share
    report         CSV / Markdown tables, plots
    implicit       implicit reward accuracy on held-out labels
    run            EvalConfig + run_evaluation (what `kto-lab eval run` does)
"""

from kto_lab.eval.scorers import Scorer, brightness, contrast, get_scorer, redness, register_scorer, saturation

__all__ = ["Scorer", "get_scorer", "register_scorer", "redness", "saturation", "brightness", "contrast"]
