"""What every figure of the project shares: the display names of methods, utilities, metrics and
settings (one mapping, so a legend never shows a raw column name), and figures that leave
matplotlib's backend alone.

Plotting functions build their figure with :func:`new_figure`, save it when given a path and
return it, so a notebook shows it as the value of a cell. They never choose a backend: a
notebook keeps its inline one, a headless machine gets matplotlib's own fallback (Agg).
"""

from __future__ import annotations

# method, metric and setting names (as in configs, CSV columns and the CLI) -> display names
LABELS = {
    # methods (kto_lab.objectives; toy and synthetic runs)
    "pretrained": "pretrained model",
    "base": "base model",
    "sft": "SFT",
    "csft": "CSFT",
    "bce": "BCE",
    "dpo": "Diffusion-DPO",
    "kto": "Diffusion-KTO",
    "spin": "SPIN-Diffusion",
    "nft": "DiffusionNFT",
    # toy metrics (toy/metrics.py)
    "share_desirable": "share in P_d's region",
    "share_undesirable": "share in P_u's region",
    "share_elsewhere": "share elsewhere",
    "logp_desirable": "log-density under P_d",
    "logp_undesirable": "log-density under P_u",
    "energy_to_desirable": "energy distance to P_d",
    "energy_to_pretrained": "energy distance to the pretrained model",
    "param_change": "relative parameter change",
    # image scores (kto_lab.eval.scorers) and the shapes world's fidelity
    "pickscore": "PickScore",
    "hpsv2": "HPS v2",
    "aesthetic": "aesthetic score",
    "clip": "CLIP score",
    "imagereward": "ImageReward",
    "fidelity": "prompt fidelity",
    # settings
    "beta": "β",
    "gamma": "γ (share of desirable samples)",
    "utility": "utility U",
    "lambda_desirable": "λ_D",
    "lambda_undesirable": "λ_U",
}
# Diffusion-KTO's utilities (kto_lab.objectives.UTILITIES); "kto" is the paper's default
UTILITY_LABELS = {
    "kto": "Kahneman-Tversky",
    "loss_averse": "loss-averse",
    "risk_seeking": "risk-seeking",
    "prospect": "prospect value fn",
}


def label(name: str) -> str:
    """The display name of a method, metric or setting; unknown names come back unchanged.

    Diffusion-KTO with a non-default utility is ``kto:<utility>`` (toy) or ``kto_<utility>``
    (synthetic runs): "Diffusion-KTO (loss-averse U)".
    """
    objective, _, utility = name.replace(":", "_", 1).partition("_")
    if objective == "kto" and utility:
        return LABELS["kto"] if utility == "kto" else f"{LABELS['kto']} ({UTILITY_LABELS.get(utility, utility)} U)"
    return LABELS.get(name, name)


def new_figure(**kwargs):
    """``plt.figure(**kwargs)``, closed at once. Creating it through pyplot loads the current backend
    (in Jupyter the inline one, which registers how a returned figure is shown); closing it leaves
    a figure that pyplot forgets: shown once when a notebook cell returns it (not again at the end
    of the cell), saved by ``fig.savefig`` without any backend, freed with its last reference."""
    import matplotlib.pyplot as plt

    fig = plt.figure(**kwargs)
    plt.close(fig)
    return fig
