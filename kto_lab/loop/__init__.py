"""Align a model to one person's taste in rounds: generate -> label -> train -> evaluate.

    import kto_lab
    kto_lab.rounds("my_rounds.yaml")                      # = kto-lab rounds --config my_rounds.yaml

    from kto_lab.loop import Rounds                       # one stage at a time (the notebook)
    r = Rounds(cfg); r.generate(1); r.session(1); r.label(1); r.train(1); r.evaluate(1)

* :mod:`kto_lab.loop.config`: :class:`RoundsConfig` (the labeler, generation, the trainer's config, evaluation);
* :mod:`kto_lab.loop.labelers`: a person (the labeling page or widget), a scorer with a threshold or a quantile,
  a synthetic user, a Python function;
* :mod:`kto_lab.loop.rounds`: :class:`Rounds`, each round a run directory, every stage resumable;
* :mod:`kto_lab.loop.report`: the round log (JSONL, CSV, plot).

See docs/rounds.md.
"""

from .config import GenerateConfig, LabelerConfig, RoundEvalConfig, RoundsConfig, load_rounds_config
from .labelers import CallableLabeler, LabelsPending, PersonLabeler, ScorerLabeler
from .report import plot_before_after, plot_round_log, read_round_log
from .rounds import Rounds, rounds

__all__ = ["Rounds", "rounds", "RoundsConfig", "LabelerConfig", "GenerateConfig", "RoundEvalConfig",
           "load_rounds_config", "LabelsPending", "PersonLabeler", "ScorerLabeler", "CallableLabeler", "plot_before_after",
           "plot_round_log", "read_round_log"]
