"""``kto-lab synthetic ...``: the shapes world.

    kto-lab synthetic base    --out figures/synthetic/base     [base.unet_steps=3000 ...]
    kto-lab synthetic compare --base figures/synthetic/base/pipeline --out runs/synthetic/red [align.user=red ...]
    kto-lab synthetic figures --run runs/synthetic/red --out figures/synthetic/red
    kto-lab synthetic samples --base figures/synthetic/base/pipeline --out figures/synthetic/base_samples.png
    kto-lab synthetic sweep --plan frontier --base figures/synthetic/base/pipeline --out runs/sweeps/red [sweep.steps=200 ...]
    kto-lab synthetic sweep-report --run runs/sweeps/red --out figures/kto_vs_dpo
    kto-lab synthetic sweep --plan flow --base figures/synthetic/base_flow/pipeline --out runs/sweeps/flow
    kto-lab synthetic rounds --base figures/synthetic/base/pipeline --out runs/rounds_study [study.seeds=[0] ...]
    kto-lab synthetic rounds-report --run runs/rounds_study --out figures/rounds

Overrides are ``section.field=value`` on :class:`~kto_lab.synthetic.experiment.BaseConfig`
(``base.``), :class:`~kto_lab.synthetic.experiment.AlignConfig` (``align.``),
:class:`~kto_lab.synthetic.sweep.SweepConfig` (``sweep.``) or
:class:`~kto_lab.synthetic.rounds_study.RoundsStudyConfig` (``study.``); a bad value
fails before anything is trained.
"""

from __future__ import annotations

import json


def _threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


def _load(cls, prefix: str, overrides):
    from kto_lab.config import ConfigError, load_config, parse_overrides

    data = parse_overrides(overrides)
    extra = set(data) - {prefix}
    if extra:
        raise ConfigError(f"overrides must start with '{prefix}.' here, got {sorted(extra)}")
    return load_config(cls, None, data.get(prefix, {}))


def cmd_base(args) -> int:
    from .experiment import BaseConfig, build_base

    cfg = _load(BaseConfig, "base", args.overrides)
    _threads(args.threads)
    card = build_base(args.out, cfg, progress=not args.quiet)
    print(json.dumps(card, indent=2))
    return 0


def cmd_compare(args) -> int:
    from .experiment import AlignConfig, run_comparison

    cfg = _load(AlignConfig, "align", args.overrides)
    _threads(args.threads)
    summary = run_comparison(args.base, args.out, cfg, progress=not args.quiet)
    print(json.dumps({"win_rates": summary["win_rates"], "seconds": summary["seconds"]}, indent=1, default=float))
    return 0


def cmd_sweep(args) -> int:
    from .sweep import SweepConfig, run_sweep

    cfg = _load(SweepConfig, "sweep", args.overrides)
    _threads(args.threads)
    run_sweep(args.plan, args.base, args.out, cfg, progress=not args.quiet)
    return 0


def cmd_sweep_report(args) -> int:
    from kto_lab.config import ConfigError

    from .sweep_report import redraw_report, write_report

    if not args.redraw and not args.run:
        raise ConfigError("sweep-report needs --run (the sweep directory), or --redraw to draw --out's figures "
                          "again from its tables")
    for path in (redraw_report(args.out) if args.redraw else write_report(args.run, args.out)):
        print(path)
    return 0


def cmd_rounds(args) -> int:
    from .rounds_study import RoundsStudyConfig, run_study

    cfg = _load(RoundsStudyConfig, "study", args.overrides)
    _threads(args.threads)
    run_study(args.base, args.out, cfg, log=lambda line: print(line, flush=True))
    return 0


def _writes_paths(module: str, function: str):
    """A command that calls ``module.function(args.run, args.out)`` and prints the paths it wrote."""
    def cmd(args) -> int:
        import importlib

        for path in getattr(importlib.import_module(f"{__package__}.{module}"), function)(args.run, args.out):
            print(path)
        return 0

    return cmd


cmd_rounds_report = _writes_paths("rounds_report", "write_report")
cmd_figures = _writes_paths("figures", "make_figures")


def cmd_samples(args) -> int:
    from .figures import sample_grid

    _threads(args.threads)
    sample_grid(args.base, args.out, unet=args.unet)
    print(args.out)
    return 0


def add_parser(subparsers, name: str, help: str):
    from kto_lab.config import config_help

    from .experiment import AlignConfig, BaseConfig
    from .sweep import SweepConfig

    fields = "config fields (key=default, then what it means):\n"
    p = subparsers.add_parser(name, help=help, description="The synthetic shapes world: a base text-to-image model "
                                                           "trained here, synthetic users, every method compared.")
    sub = p.add_subparsers(dest="synthetic_command", required=True, metavar="STEP")

    def common(q):
        q.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (1 is fastest on a shared 2-core machine; 0 = torch's default)")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("base", help="train the base shapes pipeline from scratch and measure its fidelity",
                       epilog=fields + config_help(BaseConfig, "base."))
    b.add_argument("--out", required=True, help="output directory (the pipeline goes to OUT/pipeline)")
    b.add_argument("overrides", nargs="*", metavar="base.key=value", help="BaseConfig fields to override (listed below)")
    common(b)
    b.set_defaults(func=cmd_base, config_fields=(BaseConfig, "base."))  # unknown --options are named by its fields

    c = sub.add_parser("compare", help="align the base to a synthetic user with every method; evaluate vs base",
                       epilog=fields + config_help(AlignConfig, "align."))
    c.add_argument("--base", required=True, help="the base pipeline directory")
    c.add_argument("--out", required=True, help="run directory (curves.csv, win_rates.csv, mean_scores.csv, ...)")
    c.add_argument("overrides", nargs="*", metavar="align.key=value", help="AlignConfig fields to override (listed below)")
    common(c)
    c.set_defaults(func=cmd_compare, config_fields=(AlignConfig, "align."))

    w = sub.add_parser("sweep", help="a resumable sweep over methods, settings, regimes and seeds (one cell per run)")
    from .sweep import PLANS

    w.add_argument("--plan", required=True, choices=list(PLANS),
                   help="frontier: every method over beta / learning rate; regimes: KTO vs DPO per data regime; "
                        "flow (a flow-matching base): KTO with each objective.flow_error over beta, DiffusionNFT, SFT")
    w.add_argument("--base", required=True, help="the base pipeline directory")
    w.add_argument("--out", required=True, help="sweep directory (cells/*.json; finished cells are skipped)")
    w.add_argument("overrides", nargs="*", help="sweep.FIELD=VALUE")
    common(w)
    w.set_defaults(func=cmd_sweep, config_fields=(SweepConfig, "sweep."))

    r = sub.add_parser("sweep-report", help="frontier and regime plots and tables of a sweep directory")
    r.add_argument("--run", help="the sweep directory")
    r.add_argument("--out", required=True, help="where the figures and tables go")
    r.add_argument("--redraw", action="store_true", help="draw the figures again from --out's tables (frontier.csv, "
                                                         "regimes.csv, comparison.md), without --run")
    r.set_defaults(func=cmd_sweep_report)

    from .rounds_study import RoundsStudyConfig

    q = sub.add_parser("rounds", help="one offline round vs rounds of labeling at equal label budgets (resumable cells)",
                       epilog=fields + config_help(RoundsStudyConfig, "study."))
    q.add_argument("--base", required=True, help="the base pipeline directory")
    q.add_argument("--out", required=True, help="study directory (cells/*.json; finished cells are skipped)")
    q.add_argument("overrides", nargs="*", metavar="study.key=value", help="RoundsStudyConfig fields to override")
    common(q)
    q.set_defaults(func=cmd_rounds, config_fields=(RoundsStudyConfig, "study."))

    qr = sub.add_parser("rounds-report", help="tables and plots of a rounds study directory")
    qr.add_argument("--run", required=True, help="the study directory")
    qr.add_argument("--out", required=True, help="where the figures and tables go")
    qr.set_defaults(func=cmd_rounds_report)

    f = sub.add_parser("figures", help="plots and tables of a comparison run")
    f.add_argument("--run", required=True, help="the run directory of `synthetic compare`")
    f.add_argument("--out", required=True, help="output directory for the figures and tables")
    f.set_defaults(func=cmd_figures)

    s = sub.add_parser("samples", help="a grid of generations of a pipeline with their captions")
    s.add_argument("--base", required=True, help="the pipeline directory to sample")
    s.add_argument("--unet", default=None, help="another UNet directory to sample with")
    s.add_argument("--out", required=True, help="PNG path")
    common(s)
    s.set_defaults(func=cmd_samples)
    return p
