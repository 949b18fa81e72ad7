"""kto_lab: Diffusion-KTO and its baselines, from a 2-D toy to Stable Diffusion.

The shared core is :mod:`kto_lab.objectives` (losses as functions of per-sample denoising
errors), :mod:`kto_lab.schedule` (noise schedule) and :mod:`kto_lab.step` (one step's loss).
Heavy parts (diffusers, transformers) are imported lazily by the sub-packages that need them.
"""

__version__ = "0.1.0"


def _quiet_torchvision_fallback() -> None:
    """transformers logs once per process that each ``*ImageProcessor`` "requires torchvision (not
    installed); falling back to ``*ImageProcessorPil``" (diffusers' pipelines name CLIP's and SigLIP's).
    The PIL processors are the ones this project means to use: it never installs torchvision. So that
    line, in every notebook and log, says nothing to act on; every other transformers message stays."""
    import logging

    logging.getLogger("transformers.utils.import_utils").addFilter(
        lambda record: "requires torchvision (not installed); falling back to" not in record.getMessage())


_quiet_torchvision_fallback()


def train(config, **overrides):
    """Fine-tune Stable Diffusion: ``kto_lab.train(TrainConfig | "config.yaml" | dict)``.

    See :func:`kto_lab.sd.trainer.train`.
    """
    from .sd.trainer import train as _train

    return _train(config, **overrides)


def rounds(config, overrides=(), **kwargs):
    """Align a model in rounds of generate -> label -> train -> evaluate: ``kto_lab.rounds(RoundsConfig |
    "rounds.yaml" | dict, labeler=None, scorers=None)``; returns the round log's rows.

    See :func:`kto_lab.loop.rounds.rounds` and docs/rounds.md.
    """
    from .loop.rounds import rounds as _rounds

    return _rounds(config, overrides, **kwargs)
