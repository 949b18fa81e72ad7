"""Experiment trackers for real (tiny SD, CPU, no network): TensorBoard, W&B in offline mode and an
MLflow file store each receive the config, the metric rows and the validation images; a tracker
that could only fail after the models load is refused in one line when the config is read.
Each test skips where its package is absent (``pip install -e ".[trackers]"`` installs them)."""

import json
import struct
from pathlib import Path

import pytest

from kto_lab.config import ConfigError
from kto_lab.sd.config import load_train_config
from kto_lab.sd.trainer import Trainer
from sd_helpers import write_records
from test_sd_trainer import config

STEPS = [1, 2]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("records"))


def run_with(tracker, tiny_sd_path, records, out):
    """Two LoRA steps logging every step to ``tracker``, one validation image at step 2."""
    cfg = config(tiny_sd_path, records, out, lora={"enabled": True, "rank": 4},
                 optim={"max_steps": 2}, checkpoint={"every": 0},
                 logging={"log_every": 1, "progress_bar": False, "report_to": [tracker], "project": "trk",
                          "validation_prompts": ["a red square"], "validation_every": 2,
                          "validation_inference_steps": 2})
    return Trainer(cfg).fit()


def test_tensorboard_receives_scalars_images_and_config(tiny_sd_path, records, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run_with("tensorboard", tiny_sd_path, records, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "trk"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("loss")] == STEPS
    assert "rewards/accuracy" in tags["scalars"] and "saturated" in tags["scalars"]
    assert [e.step for e in events.Images("validation")] == [2]
    # add_hparams writes the config to an event file in a sub-folder (accelerate: a hparams.yml in another)
    (hparams_dir,) = {f.parent for f in (tmp_path / "run" / "logs" / "trk").glob("*/events.out.tfevents.*")}
    content = EventAccumulator(str(hparams_dir)).Reload().PluginTagToContent("hparams")
    info = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert info.hparams["objective.beta"].number_value == 20.0 and info.hparams["lora.rank"].number_value == 4


def wandb_records(path: Path):
    """The records of an offline W&B run file (``run-ID.wandb``, what ``wandb sync`` uploads): a 7-byte
    header, then LevelDB-log chunks (4-byte CRC, 2-byte length, 1-byte type; 32 KiB blocks) of
    ``wandb_internal_pb2.Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    pos, record = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        record, pos = record + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a FULL chunk, or the LAST of several
            yield wandb_internal_pb2.Record.FromString(record)
            record = b""


def test_wandb_offline_receives_scalars_images_and_config(tiny_sd_path, records, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_with("wandb", tiny_sd_path, records, tmp_path / "run")
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    written = [(r.WhichOneof("record_type"), r) for r in wandb_records(next(run_dir.glob("run-*.wandb")))]
    (run,) = [r.run for kind, r in written if kind == "run"]
    assert run.project == "trk" and run.display_name == "run"
    config = {i.key: json.loads(i.value_json) for kind, r in written if kind == "config" for i in r.config.update}
    assert config["objective.beta"] == 20.0 and config["lora.rank"] == 4
    rows = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            for kind, r in written if kind == "history"]
    assert [r["_step"] for r in rows] == STEPS and "saturated" in rows[0] and "rewards/accuracy" in rows[0]
    assert [r["validation/count"] for r in rows if "validation/count" in r] == [1]
    assert list((run_dir / "files" / "media" / "images").glob("validation_2_*.png"))


def test_mlflow_file_store_receives_scalars_images_and_config(tiny_sd_path, records, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_with("mlflow", tiny_sd_path, records, tmp_path / "run")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("trk").experiment_id])
    assert run.data.params["objective.beta"] == "20.0" and run.data.params["lora.rank"] == "4"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == STEPS
    assert "saturated" in run.data.metrics and run.info.run_name == "run"
    images = [f.path for f in client.list_artifacts(run.info.run_id, "validation/step-0000002")]
    assert images == ["validation/step-0000002/00.png"]


def test_a_tracker_that_cannot_start_is_refused_in_one_line_before_anything_is_written(
        tiny_sd_path, records, tmp_path, monkeypatch, capsys):
    """MLflow 3.x refuses a file store without MLFLOW_ALLOW_FILE_STORE=true; accelerate would find out
    only after the models load, leaving a config.yaml that blocks the rerun."""
    mlflow = pytest.importorskip("mlflow")
    if int(mlflow.__version__.split(".")[0]) < 3:
        pytest.skip("MLflow 2.x opens a file store without opt-in")
    from kto_lab.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setattr("kto_lab.sd.trainer.load_components", lambda *a, **k: pytest.fail("a model was loaded"))
    out = tmp_path / "run"
    argv = ["train", f"model.pretrained={tiny_sd_path}", f"data.train=[{records}]", f"output_dir={out}",
            "cpu=true", "logging.report_to=[mlflow]"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "MLFLOW_ALLOW_FILE_STORE=true" in err and "logging.report_to" in err
    assert not out.exists() and not (tmp_path / "mlruns").exists()


def test_mlflow_database_store_without_sqlalchemy_is_refused_in_one_line(tmp_path, monkeypatch):
    """MLflow 3's default store is sqlite:///mlflow.db; mlflow-skinny cannot open it (no SQLAlchemy)."""
    pytest.importorskip("mlflow")
    import importlib.util

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    if importlib.util.find_spec("sqlalchemy") is not None:
        assert load_train_config(None, ["logging.report_to=[mlflow]"]).logging.report_to == ["mlflow"]
        return
    with pytest.raises(ConfigError, match=r"is a database, which needs the full mlflow package") as err:
        load_train_config(None, ["logging.report_to=[mlflow]"])
    assert "\n" not in str(err.value) and not (tmp_path / "mlflow.db").exists()


def test_report_to_all_means_every_installed_tracker(monkeypatch):
    from kto_lab.sd import metrics_log

    monkeypatch.setattr(metrics_log, "tracker_installed", lambda name: name in ("tensorboard", "wandb"))
    assert load_train_config(None, ["logging.report_to=all"]).logging.report_to == ["tensorboard", "wandb"]
    assert load_train_config(None, ["logging.report_to=[wandb,all]"]).logging.report_to == ["wandb", "tensorboard"]
    monkeypatch.setattr(metrics_log, "tracker_installed", lambda name: False)
    assert load_train_config(None, ["logging.report_to=[all]"]).logging.report_to == []


def test_images_for_a_tracker_without_log_images_are_named_in_a_warning(tmp_path):
    from kto_lab.sd.metrics_log import MetricsLogger

    class ScalarsOnly:
        name = "scalars_only"

        def log(self, values, step=None):
            pass

    log = MetricsLogger(tmp_path, trackers=[ScalarsOnly()])
    with pytest.warns(UserWarning, match="tracker 'scalars_only' has no log_images"):
        log.log_images(1, "validation", [])
    log.close()


def test_a_tracker_failing_to_start_leaves_nothing_that_blocks_the_rerun(tiny_sd_path, records, tmp_path):
    from accelerate.tracking import GeneralTracker

    class Unreachable(GeneralTracker):
        name, requires_logging_directory = "unreachable", False

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            raise ConnectionError("tracking server unreachable")

    cfg = config(tiny_sd_path, records, tmp_path / "run", optim={"max_steps": 1}, checkpoint={"every": 0})
    with pytest.raises(ConnectionError):
        Trainer(cfg, trackers=[Unreachable()]).fit()
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "run.lock").exists()
    assert Trainer(cfg).fit().global_step == 1  # the same command again, without --overwrite
