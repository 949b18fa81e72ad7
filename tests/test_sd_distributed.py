"""Two CPU processes (torchrun + Accelerator(cpu=True)) on the tiny model: both ranks use the same
reference point (averaged across processes before the clamp, Diffusion-KTO sec. 4.1) although
they draw different samples, and DDP keeps their parameters identical."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from sd_helpers import write_records

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from accelerate import Accelerator
    from kto_lab.objectives import metrics_to_floats
    from kto_lab.sd.trainer import Trainer

    cfg, out = json.loads(sys.argv[1]), sys.argv[2]
    acc = Accelerator(cpu=True)
    trainer = Trainer(cfg, accelerator=acc)
    rows = [metrics_to_floats(trainer.step(trainer.source.next_batch())) for _ in range(3)]
    ckpt = trainer.save_checkpoint()
    rank = acc.process_index
    torch.save(torch.cat([p.detach().flatten() for p in trainer.unet.parameters()]), f"{out}/params{rank}.pt")
    # one more step through fit(): its log row (written by rank 0) averages the metrics of both ranks
    own, step = [], trainer.step
    def recording_step(batch):
        m = step(batch)
        own.append(metrics_to_floats(m))
        return m
    trainer.step = recording_step
    trainer.fit(stop_at=4)
    json.dump({"world": acc.num_processes, "rows": rows, "checkpoint": str(ckpt), "fit_rows": own},
              open(f"{out}/rank{rank}.json", "w"))
""")


ONE_SAMPLE_WORKER = textwrap.dedent("""
    import json, sys
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
    json.dump(seen, open(f"{out}/rank{acc.process_index}.json", "w"))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_workers(cfg: dict, tmp_path, worker: str = WORKER):
    """``worker`` on 2 CPU processes (torchrun); returns both ranks' JSON reports (``rank{r}.json``)."""
    script = tmp_path / "worker.py"
    script.write_text(worker)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), json.dumps(cfg), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_process_cpu_run_shares_reference_point_and_parameters(tiny_sd_path, tmp_path):
    records = write_records(tmp_path / "data")
    cfg = {
        "output_dir": str(tmp_path / "run"), "cpu": True,
        "model": {"pretrained": str(tiny_sd_path)},
        "data": {"train": [str(records)], "resolution": 32},
        "objective": {"objective": "kto", "beta": 20.0, "reference_point": "unrelated"},
        "optim": {"max_steps": 10, "batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0},
        "logging": {"progress_bar": False, "log_every": 1},
    }
    r0, r1 = run_two_workers(cfg, tmp_path)
    assert r0["world"] == r1["world"] == 2
    z0, z1 = [r["z_ref"] for r in r0["rows"]], [r["z_ref"] for r in r1["rows"]]
    assert z0 == z1 and any(z > 0 for z in z0)  # the same, non-trivial reference point on both ranks
    # ... although the ranks saw different samples (their own errors differ)
    assert [r["err/policy"] for r in r0["rows"]] != [r["err/policy"] for r in r1["rows"]]
    p0, p1 = torch.load(tmp_path / "params0.pt"), torch.load(tmp_path / "params1.pt")
    assert torch.equal(p0, p1)
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-0000003"
    assert r0["checkpoint"] == str(ckpt)
    assert (ckpt / "trainer_state_0.pt").is_file() and (ckpt / "trainer_state_1.pt").is_file()
    assert (ckpt / "unet" / "config.json").is_file()

    # fit's log row (rank 0 writes it) is the mean over both ranks, not rank 0's share alone
    from kto_lab.sd.metrics_log import read_metrics

    logged = read_metrics(tmp_path / "run")[-1]
    assert logged["step"] == 4
    a, b = r0["fit_rows"][0], r1["fit_rows"][0]
    assert a["loss"] != b["loss"]
    for key in ("loss", "rewards/accuracy", "err/policy"):
        assert logged[key] == pytest.approx((a[key] + b[key]) / 2, rel=1e-5), key


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
