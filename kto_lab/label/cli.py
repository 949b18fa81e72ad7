"""``kto-lab label``: label images by hand, in a browser.

    kto-lab label serve SOURCE [--decisions FILE] [--labeler NAME] [--host 127.0.0.1] [--port 8765] [--token T]
    kto-lab label progress SOURCE [--decisions FILE]

SOURCE is a folder of images (those its liked/ and disliked/ sub-folders or sidecar do not label
yet) or a table of image, caption (e.g. `kto-lab data from-folder DIR --queue queue.csv`). Decisions
go to an append-only log, by default SOURCE/decisions.jsonl (a folder) or NAME.decisions.jsonl beside
a table; `kto-lab train` reads it as a records table (data.train=[FILE]). Stop and restart at will:
only what has no decision yet is shown. Keys: L or right arrow like, D or left arrow dislike, S or
down arrow skip, U undo.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .server import DEFAULT_PORT


def default_decisions(source: str) -> Path:
    """Where a queue's decisions go by default: inside a folder, or beside a table."""
    path = Path(source)
    return path / "decisions.jsonl" if path.is_dir() else path.with_name(path.stem + ".decisions.jsonl")


def _session(args):
    from .queue import Queue
    from .session import LabelSession

    queue = Queue.from_source(args.source, default_caption=args.caption or "")
    return LabelSession(queue, args.decisions or default_decisions(args.source), args.labeler)


def _serve(args) -> int:
    from .server import serve

    return serve(_session(args), args.host, args.port, args.token)


def _progress(args) -> int:
    session = _session(args)
    progress = session.progress()
    print(json.dumps({"decisions": str(session.log.path), **progress.as_dict(),
                      "unreadable_images": [name for name, _ in session.unreadable()]}, indent=2))
    print(progress)
    return 0


def add_parser(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="label_command", required=True, metavar="ACTION")

    def source_args(p):
        p.add_argument("source", help="a folder of images, or a table (.csv/.jsonl/.parquet) of image, caption")
        p.add_argument("--decisions", default=None,
                       help="the decision log (.jsonl; default: SOURCE/decisions.jsonl, or NAME.decisions.jsonl beside a table)")
        p.add_argument("--caption", default=None,
                       help="caption of a folder's images that have none (no sidecar or .txt; default: empty)")
        p.add_argument("--labeler", default=None, help="your name in the log (default: the login name)")

    p = sub.add_parser("serve", help="a local web page to like / dislike / skip each image")
    source_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; any other than loopback is reachable from other machines and needs a token")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free one)")
    p.add_argument("--token", default=None, help="require this token on every request (default: a random one off loopback)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("progress", help="how many images have a decision (JSON, then one line)")
    source_args(p)
    p.set_defaults(func=_progress)
    return parser
