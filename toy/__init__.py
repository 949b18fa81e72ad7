"""The 2-D Gaussian toy of Diffusion-KTO section 6: data, MLP denoiser, training, sampling, figures.

Python API (the same as ``kto-lab toy ...``)::

    from toy import ToyConfig, run_figure6, write_figure6, write_figure9
    result = run_figure6(ToyConfig(), seeds=3)
    write_figure6(result, "figures"); write_figure9("figures")
"""

from .train import FIGURE6_METHODS, ToyConfig, ToyDivergenceError, finetune, parse_method, pretrain

__all__ = ["FIGURE6_METHODS", "ToyConfig", "ToyDivergenceError", "finetune", "parse_method", "pretrain"]


def __getattr__(name):  # the runners and figures pull in matplotlib/tqdm: import them lazily
    if name in ("run_figure6", "run_ablations", "run_seed", "reference_metrics", "summarize"):
        from . import run

        return getattr(run, name)
    if name in ("write_figure6", "write_figure9", "write_ablations", "plot_figure6", "plot_figure9", "plot_ablations"):
        from . import figures

        return getattr(figures, name)
    raise AttributeError(name)
