"""What a data fingerprint costs (docs/data.md, "Fingerprints"): a table of N rows read, its files checked
and fingerprinted, as a CSV with one small image file per row and as a Parquet with the image bytes inside.

    python benchmarks/data_fingerprint.py --rows 100000

Prints seconds per stage (wall clock: best of --repeat); writes its tables into a temporary directory.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from kto_lab.data.records import load_records, write_records


def stages(path: Path) -> dict:
    """Seconds to read the table, check its image files (one stat each, kept) and fingerprint it after."""
    t0 = time.perf_counter()
    table = load_records(path)
    t1 = time.perf_counter()
    table.check_files()
    t2 = time.perf_counter()
    table.fingerprint()
    t3 = time.perf_counter()
    return {"read": t1 - t0, "check_files": t2 - t1, "fingerprint": t3 - t2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    n = args.rows
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "img").mkdir()
        for i in range(n):
            (d / "img" / f"{i}.png").write_bytes(b"x" * (100 + i % 50))
        with open(d / "r.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption", "label", "score"])
            w.writerows([f"img/{i}.png", f"a photo of thing number {i} on a table", i % 2, 0.1 * i] for i in range(n))
        write_records(({"image": b"\x89PNG" + bytes([i % 256]) * 200, "caption": f"c {i}", "label": i % 2}
                       for i in range(n)), d / "r.parquet")
        for name in ("r.csv", "r.parquet"):
            path = d / name
            runs = [stages(path) for _ in range(args.repeat)]
            best = {k: min(r[k] for r in runs) for k in runs[0]}
            print(f"{name} ({n} rows, {path.stat().st_size / 1e6:.1f} MB): "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()))

if __name__ == "__main__":
    main()
