"""``kto-lab eval``: generate, score, compare (win rates), implicit reward accuracy, or all at once.

    kto-lab eval init eval.yaml                          # a commented config to start from
    kto-lab eval run --config eval.yaml [key=value ...]
    kto-lab eval generate --pipeline SD --name base --prompts PartiPrompts.tsv --out runs/eval [-n 5]
    kto-lab eval generate --pipeline SD --lora out/lora --name kto --prompts PartiPrompts.tsv --out runs/eval
    kto-lab eval score --out runs/eval --models base kto --scorer redness --scorer pickscore:path=/m/PickScore_v1
    kto-lab eval compare --out runs/eval --pair kto:base [--ci bootstrap] [--on-failure loss]
    kto-lab eval implicit --pipeline SD --lora out/lora --pairs heldout_pairs.parquet     # Diffusion-DPO Table 2
    kto-lab eval implicit --pipeline SD --lora out/lora --records heldout.parquet         # per-image sign accuracy
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

from kto_lab.config import ConfigError


def parse_scorer(spec: str):
    """``name`` or ``name:key=value,key=value`` -> ScorerSpec (validated)."""
    from kto_lab.config import from_dict
    from kto_lab.eval.run import ScorerSpec

    name, _, rest = spec.partition(":")
    data: Dict[str, str] = {"name": name}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise ConfigError(f"scorer option {item!r} in {spec!r} must look like key=value")
        k, v = item.split("=", 1)
        data[k.strip()] = v
    s = from_dict(ScorerSpec, data, prefix="scorer.")
    s.validate("scorer")
    return s


TEMPLATE = "eval_template.yaml"  # in kto_lab/configs: the README's first run against its base model


def cmd_init(args) -> int:
    from kto_lab.config import CONFIG_DIR

    out = Path(args.path)
    if out.exists():
        raise ConfigError(f"{out} already exists; edit it, or give kto-lab eval init another path")
    out.write_text((CONFIG_DIR / TEMPLATE).read_text())
    print(f"wrote {out}: set its prompts and models, then: kto-lab eval run --config {out}")
    return 0


def cmd_run(args) -> int:
    from kto_lab.config import load_config
    from kto_lab.eval.run import EvalConfig, run_evaluation

    cfg = load_config(EvalConfig, args.config, args.overrides)
    result = run_evaluation(cfg, make_plots=not args.no_plots)
    print(Path(result.paths["report"]).read_text())
    _print_failures(result.generation)
    return 0


def _print_failures(generation: Dict[str, Dict[str, int]]) -> None:
    for model, c in generation.items():
        if c.get("failed"):
            print(f"WARNING: {model}: {c['failed']} image(s) failed to generate (see its manifest.jsonl)", file=sys.stderr)


def cmd_generate(args) -> int:
    from kto_lab.eval.prompts import load_prompts, save_prompts
    from kto_lab.eval.run import EvalConfig, ModelSpec, check_out_dir, generate_all
    from kto_lab.paths import safe_name
    from kto_lab.sd.models import check_model_paths

    safe_name(args.name, "--name")
    cfg = EvalConfig(prompts=args.prompts, prompt_format=args.prompt_format, limit=args.limit, per_style=args.per_style,
                     per_style_seed=args.per_style_seed,
                     models=[ModelSpec(args.name, args.pipeline, args.denoiser, args.lora)], out_dir=args.out,
                     n_per_prompt=args.n, seed=args.seed, batch_size=args.batch_size, num_inference_steps=args.steps,
                     guidance_scale=args.guidance_scale, height=args.height, width=args.width, device=args.device,
                     dtype=args.dtype, safety_checker=args.safety_checker).validate()  # bad values fail before loading
    check_model_paths(args.pipeline, args.denoiser, args.lora, prefix="--")
    check_out_dir(args.out, "--out", inputs={"--prompts": args.prompts, "--pipeline": args.pipeline,
                                             "--denoiser": args.denoiser, "--lora": args.lora,
                                             "--safety-checker": args.safety_checker},
                  writes=["prompts.jsonl"], models=[args.name])
    prompts = load_prompts(cfg.prompts, cfg.prompt_format, limit=cfg.limit, per_style=cfg.per_style,
                           per_style_seed=cfg.per_style_seed)
    save_prompts(prompts, Path(cfg.out_dir) / "prompts.jsonl")
    counts = generate_all(cfg, prompts)
    print(json.dumps(counts))
    _print_failures(counts)
    return 0


def cmd_score(args) -> int:
    from kto_lab.eval.protocol import score_model
    from kto_lab.eval.run import build_scorers, resolve_device
    from kto_lab.paths import safe_name

    for m in args.models:  # each names a folder under --out, where scores.csv is written
        safe_name(m, "--models")
    scorers = build_scorers([parse_scorer(s) for s in args.scorer], resolve_device(args.device), args.batch_size)
    for m in args.models:
        df = score_model(Path(args.out) / m, scorers, batch_size=args.batch_size)
        print(f"{m}: scored {int((df['status'] == 'ok').sum())} images, {int((df['status'] != 'ok').sum())} failed")
    return 0


def cmd_compare(args) -> int:
    from kto_lab.data.tables import DataError
    from kto_lab.eval.protocol import load_scores, metrics_in
    from kto_lab.eval.run import REPORT_FILES, EvalConfig, ModelSpec, check_out_dir, compare_all
    from kto_lab.paths import safe_name

    pairs = EvalConfig(compare=list(args.pair)).comparisons()  # each must be model_a:model_b (ConfigError)
    models = [safe_name(m, "--pair model") for m in dict.fromkeys(m for p in pairs for m in p)]
    check_out_dir(args.out, "--out", inputs={"--prompts-file": args.prompts_file}, writes=REPORT_FILES)
    scores = load_scores(args.out, models)
    if args.prompts_file:
        from kto_lab.eval.prompts import load_prompts

        wanted = {p.id for p in load_prompts(args.prompts_file)}
        kept = scores[scores["prompt_id"].isin(wanted)]
        if not len(kept):
            have = sorted(set(scores["prompt_id"]))
            raise DataError(f"--prompts-file {args.prompts_file!r}: none of its {len(wanted)} prompt ids is among the "
                            f"{len(have)} scored in {args.out!r} (e.g. {have[:3]}); pass the prompts.jsonl of this "
                            "evaluation")
        scores = kept
    scored = metrics_in(scores)
    missing = [m for m in args.metrics or [] if m not in scored]
    if missing:
        raise ConfigError(f"--metrics {missing} not scored in {args.out!r} for {models} (scored: {scored}); run "
                          "`kto-lab eval score` with that scorer first")
    metrics = args.metrics or scored
    tolerances = {}
    for item in args.tie_tolerance or []:
        metric, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--tie-tolerance {item!r} must look like metric=value, e.g. redness=0.001")
        try:
            tolerances[metric] = float(value)
        except ValueError:
            raise ConfigError(f"--tie-tolerance {item!r}: {value!r} is not a number") from None
    cfg = EvalConfig(prompts="-", models=[ModelSpec(m, "-") for m in models], compare=list(args.pair),
                     out_dir=args.out, ci_method=args.ci, on_failure=args.on_failure, n_bootstrap=args.n_bootstrap,
                     seed=args.seed, tie_tolerance=tolerances, min_prompts=args.min_prompts)
    cfg.validate()
    _, _, _, paths = compare_all(cfg, scores, metrics, make_plots=not args.no_plots)
    print(Path(paths["report"]).read_text())
    return 0


def cmd_implicit(args) -> int:
    from kto_lab.eval.implicit import evaluate_implicit_accuracy
    from kto_lab.eval.run import resolve_device
    from kto_lab.sd.models import check_model_paths

    if not (args.denoiser or args.lora):
        raise ConfigError("eval implicit compares a fine-tuned model with its base --pipeline: give --denoiser DIR "
                          "(a fine-tuned denoiser, e.g. a run's unet/) or --lora PATH (LoRA weights)")
    check_model_paths(args.pipeline, args.denoiser, args.lora, prefix="--")

    res = evaluate_implicit_accuracy(args.pipeline, args.records, pairs_path=args.pairs, denoiser_path=args.denoiser,
                                     lora_path=args.lora,
                                     beta=args.beta, n_draws=args.draws, seed=args.seed, batch_size=args.batch_size,
                                     device=resolve_device(args.device), limit=args.limit)
    print(json.dumps(res.to_dict()))
    return 0


def _model_args(p):
    p.add_argument("--pipeline", required=True, help="base diffusers pipeline directory (e.g. SD v1-5)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--denoiser", "--unet", dest="denoiser",
                   help="fine-tuned denoiser directory (diffusers format: a run's OUTPUT_DIR/unet, SD3's "
                   "OUTPUT_DIR/transformer); --unet is its old name")
    g.add_argument("--lora", help="LoRA weights file or directory (e.g. a run's OUTPUT_DIR)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N or mps")


def add_parser(subparsers, name: str, help: str):
    parser = subparsers.add_parser(name, help=help, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="STEP")

    from kto_lab.config import config_help
    from kto_lab.eval.run import EvalConfig

    p = sub.add_parser("init", help="write a commented evaluation config to start from (the README's first run "
                                    "against its base model)")
    p.add_argument("path", nargs="?", default="eval.yaml", help="where to write it (an existing file is kept)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="generate + score + compare from one YAML config",
                       epilog="config fields (key=default, then what it means):\n" + config_help(EvalConfig))
    p.add_argument("--config", help="YAML file of EvalConfig fields (listed below)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config fields to override, e.g. n_per_prompt=2")
    p.add_argument("--no-plots", action="store_true", help="write the tables only, no PNG figures")
    p.set_defaults(func=cmd_run, config_fields=(EvalConfig, ""))  # unknown --options are named by its fields

    p = sub.add_parser("generate", help="N images per prompt for one model (resumable, manifest.jsonl)")
    _model_args(p)
    p.add_argument("--name", required=True, help="model name (its folder under --out)")
    p.add_argument("--prompts", required=True, help="PartiPrompts .tsv | HPS v2 dir | Pick-a-Pic .parquet | .txt")
    p.add_argument("--prompt-format", default="auto", help="auto (from the path), partiprompts, hps, pickapic, text or jsonl")
    p.add_argument("--limit", type=int, help="only the first N prompts (a quick look)")
    p.add_argument("--per-style", type=int, help="N prompts per style, drawn at random (the paper's user study: 25)")
    p.add_argument("--per-style-seed", type=int, default=0, help="seed of the --per-style draw")
    p.add_argument("--out", required=True, help="evaluation directory; images go to OUT/NAME/images")
    p.add_argument("-n", type=int, default=5, help="images per prompt (paper: 5)")
    p.add_argument("--seed", type=int, default=0, help="image k of prompt i uses seed + i * n + k, for every model")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call")
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance")
    p.add_argument("--height", type=int, help="image height (the pipeline's default if not given)")
    p.add_argument("--width", type=int, help="image width (the pipeline's default if not given)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="pipeline precision")
    p.add_argument("--safety-checker", help="SD pipeline dir with safety_checker/ and feature_extractor/")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("score", help="score generated images with one or more scorers (scores.csv)")
    p.add_argument("--out", required=True, help="the evaluation directory of `eval generate`")
    p.add_argument("--models", nargs="+", required=True, help="model names (folders under --out)")
    p.add_argument("--scorer", action="append", required=True,
                   help="name or name:path=...,processor_path=...,clip_path=... (repeatable)")
    p.add_argument("--batch-size", type=int, default=16, help="images per scorer call")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("compare", help="win rates with CIs, mean scores, NSFW share; tables and plots")
    p.add_argument("--out", required=True, help="the evaluation directory (scored models under it)")
    p.add_argument("--pair", action="append", required=True, help="model_a:model_b (repeatable)")
    p.add_argument("--metrics", nargs="*", help="scorer columns to compare (default: every one scored)")
    p.add_argument("--prompts-file", help="restrict to these prompts (e.g. <out>/prompts.jsonl)")
    p.add_argument("--ci", default="bootstrap", choices=["bootstrap", "wilson", "normal", "paper"],
                   help="95%% CI of a win rate: bootstrap over prompts (default), Wilson, normal, or paper (normal "
                        "approximation over all images, Diffusion-KTO Tables 3-5; the report shows it beside any)")
    p.add_argument("--on-failure", default="loss", choices=["loss", "exclude"],
                   help="a prompt where a model has no image: a loss for it, or left out")
    p.add_argument("--n-bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--tie-tolerance", action="append", metavar="METRIC=VALUE",
                   help="median scores closer than VALUE tie (repeatable; default: each scorer's resolution, "
                        "docs/evaluation.md)")
    p.add_argument("--min-prompts", type=int, default=10, help="no interval from fewer prompts (docs/evaluation.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--no-plots", action="store_true", help="write the tables only, no PNG figures")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("implicit", help="implicit reward accuracy: pairwise on held-out pairs (Diffusion-DPO "
                                        "Table 2), or per-image sign accuracy on held-out labels")
    _model_args(p)
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--pairs", help="held-out pairs (caption, image_w, image_l): share of pairs whose winner gets the "
                                   "higher implicit reward (Diffusion-DPO Table 2; winner and loser share t and noise)")
    t.add_argument("--records", help="held-out records (image, caption, label): share of images whose implicit reward "
                                     "has their label's sign (per-image; not the papers' metric)")
    p.add_argument("--beta", type=float, default=5000.0, help="scales the rewards (never their order or sign, so not the accuracy)")
    p.add_argument("--draws", type=int, default=4, help="(t, noise) draws per image")
    p.add_argument("--seed", type=int, default=0, help="seed of the (t, noise) draws")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--limit", type=int, help="only the first N records")
    p.set_defaults(func=cmd_implicit)
    return parser
