"""Two CPU processes (torchrun + Accelerator(cpu=True)) on the tiny model: with one sample per process, each rank's
unrelated caption is the other rank's. (Every family's 2-process run, z_ref averaged across processes and
parameters kept identical by DDP, is in tests/test_families.py; :func:`run_two_workers` launches both.)"""

import json
import os
import socket
import subprocess
import sys
import textwrap

from sd_helpers import write_records

ONE_SAMPLE_WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    from accelerate import Accelerator
    import kto_lab.sd.trainer as T

    cfg, out = json.loads(sys.argv[1]), sys.argv[2]
    seen, real = [], T.objective_step
    def spy(*args, **kwargs):
        seen.append({"cond": args[5].sum().item(), "unrelated": kwargs["cond_unrelated"].sum().item()})
        return real(*args, **kwargs)
    T.objective_step = spy
    acc = Accelerator(cpu=True)
    trainer = T.Trainer(cfg, accelerator=acc)
    for _ in range(2):
        trainer.step(trainer.source.next_batch())
    with open(f"{out}/rank{acc.process_index}.json", "w") as f:
        json.dump(seen, f)
    # the reports are written: leave without the interpreter's teardown, where gloo's threads may abort the
    # process (pytorch/pytorch#190489; seen here under load even after destroy_process_group)
    torch.distributed.barrier()
    os._exit(0)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_workers(cfg, tmp_path, worker: str):
    """``worker`` on 2 CPU processes (torchrun), given ``cfg`` (JSON) and ``tmp_path``; returns both ranks' JSON
    reports (``rank{r}.json``)."""
    script = tmp_path / "worker.py"
    script.write_text(worker)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), json.dumps(cfg), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_one_sample_per_process_pairs_with_the_other_process_caption(tiny_sd_path, tmp_path):
    """With a per-device batch of 1 on two processes, each rank's unrelated caption (sec. 4.1) is the other
    rank's caption of the same step (gathered), not its own."""
    records = write_records(tmp_path / "data")
    cfg = {"output_dir": str(tmp_path / "run"), "cpu": True, "model": {"pretrained": str(tiny_sd_path)},
           "data": {"train": [str(records)], "resolution": 32},
           "objective": {"objective": "kto", "beta": 20.0, "reference_point": "unrelated"},
           "optim": {"max_steps": 2, "batch_size": 1, "learning_rate": 1e-3, "warmup_steps": 0},
           "logging": {"progress_bar": False}}
    s0, s1 = run_two_workers(cfg, tmp_path, worker=ONE_SAMPLE_WORKER)
    for a, b in zip(s0, s1):
        assert a["unrelated"] == b["cond"] and b["unrelated"] == a["cond"]
