"""``kto-lab toy figure6|figure9|ablations``: the toy's figures from the command line.

    kto-lab toy figure6 --out figures --seeds 3 [--steps 600] [--pretrain-steps 1500] [beta=3 ...]
    kto-lab toy figure6 --out figures --seeds 3 --family flow     # the same under flow matching (SD3's schedule)
    kto-lab toy figure6 --out figures --redraw [--family flow]    # the figure again from the saved results
    kto-lab toy figure9 --out figures
    kto-lab toy ablations --out figures [--seeds 2] [--family flow] [--betas 0.1 1 10]
    kto-lab toy frontier --out figures [--seeds 3] [--redraw]

``key=value`` (or ``--set key=value``) overrides any :class:`toy.train.ToyConfig` field
(``--config C.yaml`` too); bad values and an unwritable ``--out`` fail before any training starts.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from kto_lab.config import ConfigError, check_output_dir, load_config, parse_overrides


def _config(args):
    from .train import ToyConfig

    overrides = parse_overrides([*(args.set or []), *args.overrides])
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.pretrain_steps is not None:
        overrides["pretrain_steps"] = args.pretrain_steps
    if getattr(args, "samples", None) is not None:
        overrides["n_samples"] = args.samples
    if args.family is not None:
        overrides["family"] = args.family
    return load_config(ToyConfig, args.config, overrides)


def _command() -> str:
    return "kto-lab " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "kto-lab toy"


def _check_seeds(seeds):
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds} must be >= 1")


def cmd_figure6(args) -> int:
    from .figures import redraw_figure6, write_figure6
    from .run import run_figure6

    if args.redraw:
        print(f"figure 6 redrawn -> {redraw_figure6(Path(args.out), args.family or 'ddpm')}")
        return 0
    _check_seeds(args.seeds)
    cfg = _config(args)
    out = check_output_dir("--out", args.out)  # results are written at the end: fail now, not then
    t0 = time.perf_counter()
    result = run_figure6(cfg, seeds=args.seeds)
    paths = write_figure6(result, out, command=_command())
    print(f"figure 6: {args.seeds} seed(s) in {time.perf_counter() - t0:.1f}s -> {paths['png']}, {paths['json']}")
    return 0


def cmd_figure9(args) -> int:
    from kto_lab.config import check_choice
    from kto_lab.objectives import UTILITIES

    from .figures import PAPER_UTILITIES, write_figure9

    for name in args.utilities or ():
        check_choice("--utilities", name, sorted(UTILITIES))
    path = write_figure9(check_output_dir("--out", args.out), args.utilities or PAPER_UTILITIES)
    print(f"figure 9 -> {path}")
    return 0


def cmd_ablations(args) -> int:
    from .figures import write_ablations
    from .run import ABLATION_BETAS, run_ablations

    _check_seeds(args.seeds)
    cfg = _config(args)
    out = check_output_dir("--out", args.out)
    t0 = time.perf_counter()
    result = run_ablations(cfg, seeds=args.seeds, betas=args.betas or ABLATION_BETAS)
    paths = write_ablations(result, out, command=_command(), config=cfg)
    print(f"ablations: {args.seeds} seed(s) in {time.perf_counter() - t0:.1f}s -> {paths['png']}, {paths['json']}")
    return 0


def cmd_frontier(args) -> int:
    from .frontier import redraw_frontier, run_frontier, write_frontier

    if args.redraw:
        print(f"frontier redrawn -> {redraw_frontier(Path(args.out))}")
        return 0
    _check_seeds(args.seeds)
    cfg = _config(args)
    out = check_output_dir("--out", args.out)
    t0 = time.perf_counter()
    rows = run_frontier(cfg, seeds=args.seeds)
    paths = write_frontier(rows, out, command=_command(), config=cfg)
    print(f"frontier: {args.seeds} seed(s) in {time.perf_counter() - t0:.1f}s -> {paths['png']}, {paths['summary']}")
    return 0


def _common(p, seeds_default):
    from kto_lab.config import config_help

    from .train import ToyConfig

    p.epilog = "config fields (key=default, then what it means):\n" + config_help(ToyConfig)
    p.add_argument("--out", required=True, help="output directory (checked writable before training)")
    p.add_argument("--seeds", type=int, default=seeds_default, help="number of seeds")
    p.add_argument("--steps", type=int, default=None, help=f"fine-tuning steps per method (default: {ToyConfig.steps})")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help=f"pretraining steps (default: {ToyConfig.pretrain_steps})")
    p.add_argument("--family", default=None,
                   help="ddpm (the paper's, default) or flow (rectified flow as in SD3); files get a _flow suffix")
    p.add_argument("--config", default=None, help="YAML file of ToyConfig fields (listed below)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="ToyConfig fields to override, e.g. beta=3")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="the same as key=value (repeatable)")
    p.set_defaults(config_fields=(ToyConfig, ""))  # an unknown --option is named by its field (kto_lab.cli)


def add_parser(subparsers, name: str = "toy", help: str = "2-D Gaussian toy"):
    parser = subparsers.add_parser(name, help=help, description="The 2-D Gaussian toy's figures (the paper's sec. 6 "
                                                                 "and appendix D), from the command line.")
    sub = parser.add_subparsers(dest="toy_command", required=True, metavar="FIGURE")
    p6 = sub.add_parser("figure6", help="Figure 6: every method on the 2-D toy, metrics over seeds")
    _common(p6, 3)
    p6.add_argument("--samples", type=int, default=None, help="points sampled per model (default: 3500, as sec. 6)")
    p6.add_argument("--redraw", action="store_true", help="draw figure6.png (with --family flow: figure6_flow.png) "
                                                          "again from --out's saved samples and metrics, without training")
    p6.set_defaults(func=cmd_figure6)
    p9 = sub.add_parser("figure9", help="Figure 9: utilities and their derivatives, centred")
    p9.add_argument("--out", required=True, help="output directory")
    p9.add_argument("--utilities", nargs="+", default=None, help="registered utility names (default: the paper's three)")
    p9.set_defaults(func=cmd_figure9)
    pa = sub.add_parser("ablations", help="Diffusion-KTO against beta, gamma and the utility (appendix D, in small)")
    _common(pa, 2)
    pa.add_argument("--betas", nargs="+", type=float, default=None,
                    help="the betas of the beta sweep (default: 0.3 1 3 10 30)")
    pa.set_defaults(func=cmd_ablations)
    pf = sub.add_parser("frontier", help="every method over beta / learning rate: desirable vs undesirable share, "
                                         "distance moved (frontiers over seeds)")
    _common(pf, 3)
    pf.add_argument("--redraw", action="store_true", help="draw toy_frontier.png again from --out's saved "
                                                          "toy_frontier.csv, without training")
    pf.set_defaults(func=cmd_frontier)
    return parser
