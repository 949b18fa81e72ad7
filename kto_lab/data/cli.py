"""``kto-lab data``: build and inspect binary-feedback tables.

    kto-lab data pickapic --shards DIR_OR_FILES... --out records.parquet [--partition at_least_once|win_only] [--image-dir DIR]
    kto-lab data pairs    --shards DIR_OR_FILES... --out pairs.parquet [--image-dir DIR]
    kto-lab data threshold TABLE --out records.parquet [--score-column aesthetic] [--threshold 7]
    kto-lab data label     TABLE --out records.parquet --fn package.module:function
    kto-lab data from-folder DIR [--out records.csv] [--queue queue.csv] [--sidecar FILE] [--caption TEXT]
    kto-lab data stats     TABLE... [--check-images]

Converters print their stats (class counts included) as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from ..config import ConfigError


def _print(stats: dict) -> None:
    print(json.dumps(stats, indent=2, default=str))


def _pickapic(args) -> int:
    from .pickapic import pickapic_to_records

    _print(pickapic_to_records(args.shards, args.out, partition=args.partition, image_dir=args.image_dir,
                               on_missing_image=args.on_missing_image, drop_repeated_rankings=args.drop_repeated_rankings))
    return 0


def _pairs(args) -> int:
    from .pickapic import pickapic_to_pairs

    _print(pickapic_to_pairs(args.shards, args.out, image_dir=args.image_dir, on_missing_image=args.on_missing_image,
                            drop_repeated_rankings=args.drop_repeated_rankings))
    return 0


def _threshold(args) -> int:
    from .converters import threshold_records

    _print(threshold_records(args.table, args.out, score_column=args.score_column, threshold=args.threshold))
    return 0


def load_callable(spec: str):
    """``package.module:attribute`` -> the callable it names (modules in the current directory are
    found, as with ``python -m``); a missing module or attribute, or a value that is not callable,
    is a :class:`ConfigError` naming it."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"--fn {spec!r} must look like package.module:function")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        fn = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # the module exists but imports something missing: its traceback says where
        raise ConfigError(f"--fn {spec!r}: no module named {exc.name!r} (looked in the current directory and "
                          "sys.path)") from None
    for k, part in enumerate(attr.split(".")):
        if not hasattr(fn, part):
            raise ConfigError(f"--fn {spec!r}: {'.'.join([module, *attr.split('.')[:k]])} has no attribute {part!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"--fn {spec!r} is a {type(fn).__name__}, not a function fn(image, caption) -> bool")
    return fn


def _label(args) -> int:
    from .converters import label_with_function

    _print(label_with_function(args.table, args.out, load_callable(args.fn), on_missing_image=args.on_missing_image))
    return 0


def _from_folder(args) -> int:
    from .folder import folder_to_records

    stats = folder_to_records(args.folder, args.out, queue=args.queue, sidecar=args.sidecar, default_caption=args.caption or "")
    _print(stats)
    for bad in stats["unreadable"]:
        print(f"warning: skipped unreadable image {bad['image']}: {bad['reason']}", file=sys.stderr)
    return 0


def _stats(args) -> int:
    from .records import load_pairs, load_records
    from .tables import table_columns

    columns = table_columns(args.tables[0])
    pairs = "label" not in columns and "image_w" in columns
    load = load_pairs if pairs else load_records
    table = load(args.tables, on_missing_image="skip" if args.check_images else "error")
    stats = {"tables": [str(t) for t in args.tables], "kind": "pairs" if pairs else "records", "rows": len(table)}
    if not pairs:
        stats.update(table.counts())
        if table.scores is not None:
            finite = table.scores[table.scores == table.scores]  # NaN = no score
            stats["score_mean"] = float(finite.mean()) if len(finite) else None
    if args.check_images:
        stats["unreadable_images"] = table.check_images(progress=True)
        stats["unreadable"] = [{"index": i, "image": where, "reason": why} for i, where, why in table.skipped[:20]]
    _print(stats)
    if not pairs and 0 in table.counts().values():
        print("warning: one class is empty; gamma sampling with 0 < gamma < 1 needs both (Diffusion-KTO sec. 4.2)",
              file=sys.stderr)
    return 0


def add_parser(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    def shards_args(p):
        p.add_argument("--shards", nargs="+", required=True, help="Pick-a-Pic v2 parquet shards: files, directories or globs")
        p.add_argument("--out", required=True, help="output table (.parquet keeps image bytes; .csv/.jsonl need --image-dir)")
        p.add_argument("--image-dir", default=None, help="write each image once as a file here instead of keeping bytes")
        p.add_argument("--on-missing-image", choices=("error", "skip"), default="error",
                       help="an image without bytes, or whose bytes are not an image: stop naming it, or skip and count it")
        p.add_argument("--drop-repeated-rankings", action="store_true",
                       help="count a decisive row whose ranking_id was seen before only once (default: keep it)")

    p = sub.add_parser("pickapic", help="Pick-a-Pic v2 shards -> per-image records")
    shards_args(p)
    p.add_argument("--partition", choices=("at_least_once", "win_only"), default="at_least_once",
                   help="desirable = preferred at least once (paper) or always preferred (appendix D.1)")
    p.set_defaults(func=_pickapic)

    p = sub.add_parser("pairs", help="Pick-a-Pic v2 shards -> (winner, loser) pairs for Diffusion-DPO")
    shards_args(p)
    p.set_defaults(func=_pairs)

    p = sub.add_parser("threshold", help="scored images -> records, desirable iff score >= threshold")
    p.add_argument("table", help="table with image, caption and the score column")
    p.add_argument("--out", required=True, help="output record table (.parquet, .csv or .jsonl)")
    p.add_argument("--score-column", default="score", help="the column holding each image's score")
    p.add_argument("--threshold", type=float, default=7.0, help="paper appendix C: aesthetic score >= 7")
    p.set_defaults(func=_threshold)

    p = sub.add_parser("label", help="images -> records labelled by a Python function fn(image, caption) -> bool")
    p.add_argument("table", help="table with image and caption")
    p.add_argument("--out", required=True, help="output record table (.parquet, .csv or .jsonl)")
    p.add_argument("--fn", required=True, help="package.module:function returning True for desirable "
                                               "(modules in the current directory are found)")
    p.add_argument("--on-missing-image", choices=("error", "skip"), default="error",
                   help="a missing or unreadable image: stop naming it, or leave it out and count it")
    p.set_defaults(func=_label)

    p = sub.add_parser("from-folder", help="a folder of images (+ captions, + likes) -> records, and a queue to label")
    p.add_argument("folder", help="images; likes from liked/ and disliked/ sub-folders or a sidecar's label column; "
                                  "captions from a sidecar (metadata.jsonl/csv, captions.jsonl/csv) or a .txt per image")
    p.add_argument("--out", default=None, help="records table for the labelled images (.csv, .jsonl or .parquet)")
    p.add_argument("--queue", default=None, help="table (image, caption) of the unlabelled images, for kto-lab label serve")
    p.add_argument("--sidecar", default=None, help="the captions/labels table (default: the first of metadata.jsonl, "
                                                   "metadata.csv, captions.jsonl, captions.csv in the folder)")
    p.add_argument("--caption", default=None, help="caption of images that have none (default: empty)")
    p.set_defaults(func=_from_folder)

    p = sub.add_parser("stats", help="print the class counts of record (or pair) tables")
    p.add_argument("tables", nargs="+", help="record or pair tables (.parquet, .csv, .jsonl)")
    p.add_argument("--check-images", action="store_true", help="read every image once and count the unreadable ones")
    p.set_defaults(func=_stats)
    return parser
