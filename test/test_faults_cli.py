"""The fault suite's CLI families: command-line paths, checkpoints, config files and numerics.

Every case is a condition a user causes; each must end with exit 2, a message naming the input and the
fix, and no traceback. The CLI runs in a forked child of this process (the real `main`, with this
process's imports already done, so a case takes a second instead of ten); the child prints an escaping
exception's traceback and exits 1 exactly as the interpreter would, and
test_the_forked_cli_behaves_like_the_installed_command checks that against a real `python -m` process.
The README's table "Faults and bad input" lists these families and what each gets.
"""

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from ros_helpers import ROOT

from clip2scene_core.cli import main

pytestmark = pytest.mark.slow
SCENE = "synthetic:frames=2,seed=3,cameras=1,width=64,height=48,beams=16"
DATA = ["--data", SCENE]
TEACHER = ["--mode", "teacher", "--teacher", "labels"]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def cli(*arguments: str, timeout: float = 240) -> Run:
    """`clip2scene ARGUMENTS` in a forked child: (exit status, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: what `python -m clip2scene_core.cli` does after its imports
            code = 1
            # The parent's OpenMP pool does not survive fork: a parallel op in the child would wait for it
            # forever (as in torch's DataLoader workers, which do the same).
            torch.set_num_threads(1)
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child ends with os._exit
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                code = main(list(arguments))
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            except BaseException:  # noqa: BLE001 - what the interpreter does with an escaping exception
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError(f"clip2scene {' '.join(arguments)} did not end within {timeout} s")
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return Run(os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode())


def refused(run: Run, *texts: str) -> None:
    """Exit 2, every text in the one-line error, no traceback."""
    assert run.returncode == 2, (run.returncode, run.stderr[-3000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    for text in texts:
        assert text in run.stderr, (text, run.stderr[-2000:])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_student):
    """A config for tiny fast runs, the session's tiny pretrained checkpoint and a fine-tuned one made from it."""
    folder = tmp_path_factory.mktemp("faults_cli")
    config = folder / "config.yaml"
    config.write_text("teacher: {name: 'noisy:0.0', text_encoder: hash}\nstudent: {preset: tiny}\n"
                      "train: {optimizer: adamw, lr: 0.001, max_paired: 500, batch_size: 1, sweeps: 1, epochs: 1,\n"
                      "        bn_recalibration: 0}\nfinetune: {epochs: 1, batch_size: 1, labels_fraction: 1.0}\n"
                      "device: cpu\n")
    run = cli("finetune", "--checkpoint", str(tiny_student), "--data", "synthetic:frames=1,seed=3,cameras=0,beams=8",
              "--config", str(config), "--out", str(folder / "tuned"))
    assert run.returncode == 0, run.stderr[-3000:]
    return {"folder": folder, "config": str(config), "checkpoint": tiny_student,
            "finetuned": folder / "tuned" / "finetuned.pt"}


def test_the_forked_cli_behaves_like_the_installed_command(tmp_path):
    def real(*arguments):
        return subprocess.run([sys.executable, "-m", "clip2scene_core.cli", *arguments], check=False, cwd=ROOT,
                              capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})

    arguments = ["inspect", SCENE, "--render", str(tmp_path / "x.png"), "--frame", "7"]
    for run in (real(*arguments), cli(*arguments)):
        refused(run, "clip2scene inspect: error: --frame 7 is out of range", "frames 0 to 1")
    for run in (real("-v", *arguments), cli("-v", *arguments), cli(*arguments, "--verbose")):  # the traceback, exit 1
        assert run.returncode == 1 and "Traceback" in run.stderr and "UsageError" in run.stderr


# -- the command line: options, paths and output folders ------------------------------------------------------


def test_frames_out_of_range(tmp_path):
    refused(cli("inspect", SCENE, "--render", str(tmp_path / "x.png"), "--frame", "-1"), "--frame -1 is out of range")
    refused(cli("calibration", SCENE, "--out", str(tmp_path / "c.yaml"), "--frame", "2"),
            "--frame 2 is out of range", "frames 0 to 1")
    refused(cli("calibration", "synthetic:frames=2,start=5", "--out", str(tmp_path / "c.yaml")), "has no frames")
    refused(cli("inspect", SCENE, "--max-frames", "0"), "--max-frames 0")


def test_directories_and_pipes_where_a_file_belongs(world, tmp_path):
    refused(cli("evaluate", *TEACHER, *DATA, "--vocabulary", str(tmp_path)), f"vocabulary file {tmp_path} is a directory")
    refused(cli("pretrain", *DATA, "--out", str(tmp_path / "p"), "--config", str(tmp_path)),
            f"config file {tmp_path} is a directory")
    refused(cli("evaluate", *DATA, "--checkpoint", str(tmp_path)), f"checkpoint {tmp_path} is a folder")
    fifo = tmp_path / "vocabulary.yaml"
    os.mkfifo(fifo)  # opening it would block until something writes to it
    refused(cli("evaluate", *TEACHER, *DATA, "--vocabulary", str(fifo), timeout=60), "is not a regular file")
    refused(cli("pretrain", *DATA, "--out", str(tmp_path / "p"), "--config", str(fifo), timeout=60),
            "is not a regular file")


def test_unknown_devices(world):
    refused(cli("evaluate", *TEACHER, *DATA, "--vocabulary", "nuscenes", "--device", "tpu"), "device 'tpu'",
            "use auto, cpu, cuda")
    refused(cli("evaluate", *TEACHER, *DATA, "--vocabulary", "nuscenes", "--device", "cuda:7"), "device 'cuda:7'")
    refused(cli("segment", *DATA, "--checkpoint", str(world["checkpoint"]), "--device", "gpu", "--out",
                str(world["folder"] / "never")), "device 'gpu'")


def output_commands(world, out: str) -> dict[str, list[str]]:
    checkpoint = str(world["checkpoint"])
    return {"segment": ["segment", *DATA, "--checkpoint", checkpoint, "--out", out],
            "evaluate": ["evaluate", *DATA, "--checkpoint", checkpoint, "--out", out],
            "export": ["export", SCENE, os.path.join(out, "bag"), "--quiet"],
            "pretrain": ["pretrain", *DATA, "--config", world["config"], "--out", out],
            "finetune": ["finetune", "--checkpoint", checkpoint, *DATA, "--config", world["config"], "--out", out],
            "replay": ["replay", "/nowhere", "--checkpoint", checkpoint, "--out", out]}


def test_an_output_folder_that_is_a_file(world, tmp_path):
    file = tmp_path / "taken"
    file.write_text("a file, not a folder")
    for name, arguments in output_commands(world, str(file)).items():
        refused(cli(*arguments), str(file), "is a file" if name != "export" else "")
    (tmp_path / "bag").mkdir()
    refused(cli("export", SCENE, str(tmp_path / "bag")), "exists already; choose a new path")
    folder = tmp_path / "folder"
    folder.mkdir()
    refused(cli("inspect", SCENE, "--render", str(folder)), str(folder), "give a .png")
    refused(cli("inspect", SCENE, "--render", str(folder / "x.gif")), "give a .png")
    (tmp_path / "folder.png").mkdir()
    refused(cli("inspect", SCENE, "--render", str(tmp_path / "folder.png")), "folder.png is a folder; give a file name")
    refused(cli("calibration", SCENE, "--out", str(folder)), str(folder), "is a folder; give a file name")
    refused(cli("calibration", SCENE, "--out", str(file / "calibration.yaml")), str(file), "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0555 does not stop root from writing, so a "
                                             "read-only folder cannot be simulated")
def test_an_output_folder_on_a_read_only_file_system(world, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)  # 0555
    try:
        for arguments in output_commands(world, str(locked / "out")).values():
            refused(cli(*arguments), "cannot be written", "choose a folder you can write to")
    finally:
        locked.chmod(0o755)


def test_an_output_folder_that_cannot_be_created(world):
    """Even root may not make folders in /sys: the same error path as a read-only file system, run as root too."""
    try:
        os.mkdir("/sys/clip2scene_probe")
    except OSError:
        pass
    else:
        os.rmdir("/sys/clip2scene_probe")
        pytest.skip("this machine lets folders be made in /sys")
    for name in ("segment", "evaluate", "export", "pretrain"):
        refused(cli(*output_commands(world, "/sys/clip2scene_out")[name]), "/sys/clip2scene_out",
                "cannot be written", "choose a folder you can write to")


def test_empty_sources_epochs_and_batches(world, tmp_path):
    empty = "synthetic:frames=2,start=5"
    refused(cli("evaluate", *TEACHER, "--data", empty, "--vocabulary", "nuscenes"), "holds no frames")
    refused(cli("finetune", "--checkpoint", str(world["checkpoint"]), "--data", empty, "--config", world["config"],
                "--out", str(tmp_path / "f")), "holds no frames")
    refused(cli("pretrain", "--data", empty, "--config", world["config"], "--out", str(tmp_path / "p")),
            "hold no frames")
    refused(cli("finetune", "--checkpoint", str(world["checkpoint"]), *DATA, "--epochs", "0", "--out",
                str(tmp_path / "f")), "finetune.epochs and finetune.batch_size must be at least 1")
    zero_batch = tmp_path / "zero_batch.yaml"
    zero_batch.write_text("finetune: {batch_size: 0}\n")
    refused(cli("finetune", "--checkpoint", str(world["checkpoint"]), *DATA, "--config", str(zero_batch), "--out",
                str(tmp_path / "f")), str(zero_batch), "finetune.batch_size must be at least 1")
    refused(cli("pretrain", *DATA, "--batch-size", "0", "--out", str(tmp_path / "p")), "train.batch_size")
    refused(cli("pretrain", *DATA, "--epochs", "-3", "--out", str(tmp_path / "p")), "train.epochs")
    refused(cli("replay", "/nowhere", "--slop-ms", "-5"), "--slop-ms -5")
    refused(cli("replay", "/nowhere", "--out-bag", str(tmp_path)), f"--out-bag {tmp_path} exists already")
    refused(cli("segment", "--mode", "student", *DATA, "--out", str(tmp_path / "s")), "needs --checkpoint")


# -- checkpoints ---------------------------------------------------------------------------------------------------


def edited(world, tmp_path, name: str, edit) -> str:
    payload = torch.load(world["checkpoint"], weights_only=True)
    edit(payload)
    torch.save(payload, tmp_path / name)
    return str(tmp_path / name)


def test_checkpoints_missing_entries_or_holding_the_wrong_things(world, tmp_path):
    def first_weight(payload):
        return next(k for k, v in payload["state_dict"].items() if v.is_floating_point())

    cases = {
        "no_weights.pt": (lambda p: p.pop("state_dict"), "entry 'state_dict' is missing"),
        "no_voxel.pt": (lambda p: p["architecture"].pop("voxel_size_m"), "architecture.voxel_size_m is missing"),
        "list_weights.pt": (lambda p: p["state_dict"].update({first_weight(p): [1.0, 2.0]}), "is a list, not a tensor"),
        "text_weights.pt": (lambda p: p.update(state_dict="weights"), "entry 'state_dict' is a str, not a dict"),
        "nan_weights.pt": (lambda p: p["state_dict"][first_weight(p)].fill_(float("nan")), "holds NaN or infinite"),
        "nan_voxel.pt": (lambda p: p["architecture"].update(voxel_size_m=float("nan")),
                         "student.voxel_size_m must be positive, got nan"),
        "negative_voxel.pt": (lambda p: p["architecture"].update(voxel_size_m=-0.1), "voxel_size_m must be positive"),
        "string_channels.pt": (lambda p: p["architecture"].update(channels="8,8"), "channels is '8,8', not a list"),
        "bad_encoder.pt": (lambda p: p.update(text_encoder="hash:many"), "expected hash:DIMENSIONS"),
        "numeric_encoder.pt": (lambda p: p.update(text_encoder=512), "entry 'text_encoder' is a int, not a string"),
        "no_vocabulary.pt": (lambda p: p.pop("vocabulary"), "holds no vocabulary; give one with --vocabulary"),
        "bad_vocabulary.pt": (lambda p: p.update(vocabulary={"name": "v", "classes": []}), "'classes' is empty"),
        "inf_text.pt": (lambda p: p["text_embeddings"].fill_(float("inf")), "text_embeddings holds NaN or infinite"),
    }
    for name, (edit, message) in cases.items():
        path = edited(world, tmp_path, name, edit)
        refused(cli("evaluate", *DATA, "--checkpoint", path), path, message)


def test_fine_tuned_checkpoints_are_checked_too(world, tmp_path):
    payload = torch.load(world["finetuned"], weights_only=True)
    assert "classifier" in payload and "training" not in payload
    payload["classifier"]["classes"] = payload["classifier"]["classes"][:-1]
    torch.save(payload, tmp_path / "short.pt")
    refused(cli("evaluate", *DATA, "--checkpoint", str(tmp_path / "short.pt")), "classes for")
    payload["classifier"]["scale"] = float("nan")
    torch.save(payload, tmp_path / "nan_scale.pt")
    refused(cli("evaluate", *DATA, "--checkpoint", str(tmp_path / "nan_scale.pt")), "classifier.scale")


def test_resume_needs_a_pretraining_checkpoint_with_the_same_optimiser(world, tmp_path):
    refused(cli("pretrain", *DATA, "--config", world["config"], "--out", str(tmp_path / "a"), "--resume",
                str(world["finetuned"])), "is a fine-tuned student", "clip2scene finetune --checkpoint")
    sgd = tmp_path / "sgd.yaml"
    sgd.write_text(Path(world["config"]).read_text().replace("optimizer: adamw", "optimizer: sgd"))
    refused(cli("pretrain", *DATA, "--config", str(sgd), "--out", str(tmp_path / "b"), "--resume",
                str(world["checkpoint"])), "trained with train.optimizer 'adamw', this run uses 'sgd'")
    broken = edited(world, tmp_path, "no_epoch.pt", lambda p: p["training"].pop("epoch"))
    refused(cli("pretrain", *DATA, "--config", world["config"], "--out", str(tmp_path / "c"), "--resume", broken),
            "training.epoch is missing")
    refused(cli("pretrain", *DATA, "--config", world["config"], "--out", str(tmp_path / "d"), "--resume"),
            "does not exist")  # --resume alone: OUT's last checkpoint, of which there is none yet


# -- config and vocabulary files, and runs that go numerically wrong -----------------------------------------------


def test_yaml_must_be_plain_data_of_bounded_size(tmp_path):
    marker = tmp_path / "pwned"
    files = {
        "list.yaml": ("- train\n- lr\n", "config: expected a mapping"),
        "tag.yaml": (f"device: !!python/object/apply:os.system ['touch {marker}']\n", "!!python/object/apply"),
        "binary.yaml": ("device: !!binary aGVsbG8=\n", "!!binary values are not accepted"),
        "date.yaml": ("train: {epochs: 2024-01-01}\n", "!!timestamp values are not accepted"),
        "bomb.yaml": (("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"), "anchors and aliases"),
        "two.yaml": ("device: cpu\n---\ndevice: cuda\n", "expected a single document"),
        "deep.yaml": ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        "huge.yaml": ("# padding\n" * 500_000, "is larger than"),
        "latin1.yaml": (b"device: caf\xe9\n", "is not UTF-8 text"),
    }
    for name, (text, message) in files.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        refused(cli("pretrain", *DATA, "--out", str(tmp_path / "p"), "--config", str(path)), str(path), message)
        vocabulary = cli("evaluate", *TEACHER, *DATA, "--vocabulary", str(path))
        refused(vocabulary, str(path))
    assert not marker.exists()


def test_nan_inf_and_negative_sizes_in_configs(tmp_path):
    cases = {"train: {lr: .nan}\n": "train.lr: nan is not a number a run can use",
             "student: {voxel_size_m: .inf}\n": "student.voxel_size_m: inf is not a number",
             "student: {voxel_size_m: -0.1}\n": "student.voxel_size_m must be positive",
             "train: {st_grid_m: -1}\n": "train.st_grid_m must be positive",
             "train: {weight_decay: -0.1}\n": "train.weight_decay must not be negative",
             "train: {max_paired: -5}\n": "train.max_paired must not be negative",
             "finetune: {head_lr: -0.01}\n": "finetune.head_lr must not be negative",
             "clip: {image_size: [0, 416]}\n": "clip.image_size must be [height, width]",
             "student: {channels: [8, 8, 16, 16, 32, 32, 16, 16, -16]}\n": "student.channels must all be at least 1"}
    for index, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"config{index}.yaml"
        path.write_text(text)
        refused(cli("pretrain", *DATA, "--out", str(tmp_path / "p"), "--config", str(path)), str(path), message)
    refused(cli("pretrain", *DATA, "--out", str(tmp_path / "p"), "--lr", "nan"), "train.lr: nan is not a number")
    refused(cli("finetune", "--checkpoint", "x.pt", *DATA, "--labels-fraction", "nan", "--out", str(tmp_path / "f")),
            "finetune.labels_fraction")


def test_a_diverging_run_stops_naming_the_cause(world, tmp_path):
    hot = tmp_path / "hot.yaml"
    hot.write_text(Path(world["config"]).read_text().replace("lr: 0.001", "lr: 1.0e+30").replace("epochs: 1,", "epochs: 2,")
                   + "\n")
    run = cli("pretrain", "--data", SCENE, "--config", str(hot), "--out", str(tmp_path / "p"))
    refused(run, "pretraining at epoch", "loss is", "train.lr 1e+30: try a smaller one")
    hot.write_text(Path(world["config"]).read_text().replace("finetune: {", "finetune: {lr: 1.0e+30, head_lr: 1.0e+30, ")
                   .replace("epochs: 1, batch_size: 1, labels", "epochs: 3, batch_size: 1, labels"))
    run = cli("finetune", "--checkpoint", str(world["checkpoint"]), "--data", SCENE, "--config", str(hot), "--out",
              str(tmp_path / "f"))
    refused(run, "fine-tuning at epoch", "loss is", "finetune.lr 1e+30")
    assert not (tmp_path / "f" / "finetuned.pt").exists()


def test_no_label_matching_the_vocabulary(world, tmp_path):
    foreign = tmp_path / "foreign.yaml"
    foreign.write_text("name: another_dataset\nclasses:\n  - {name: car, ids: [900]}\n  - {name: road, ids: [901]}\n")
    refused(cli("evaluate", *DATA, "--checkpoint", str(world["checkpoint"]), "--vocabulary", str(foreign)),
            "no label of the source matches vocabulary 'another_dataset'", "--vocabulary nuscenes")
    refused(cli("finetune", "--checkpoint", str(world["checkpoint"]), *DATA, "--vocabulary", str(foreign),
                "--config", world["config"], "--out", str(tmp_path / "f")),
            "no label of the source matches vocabulary 'another_dataset'", "nothing to fine-tune on")
    no_ids = tmp_path / "no_ids.yaml"
    no_ids.write_text("name: names_only\nclasses: [{name: car}, {name: road}]\n")
    refused(cli("evaluate", *DATA, "--checkpoint", str(world["checkpoint"]), "--vocabulary", str(no_ids)),
            "lists no raw label ids")


def test_a_genuine_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """A failure no user caused (here: the summary code itself breaks) is not dressed up as a user error."""
    from clip2scene_core import inspect_source

    def broken(*arguments, **options):
        return {}["summary"]

    monkeypatch.setattr(inspect_source, "summarize", broken)
    run = cli("inspect", SCENE)
    assert run.returncode == 1 and "Traceback" in run.stderr and "KeyError" in run.stderr


def test_ctrl_c_ends_a_command_without_a_traceback(tmp_path):
    """SIGINT while a command works (an export writing its bag): "interrupted", exit 130, no traceback."""
    out = tmp_path / "bag"
    process = subprocess.Popen([sys.executable, "-m", "clip2scene_core.cli", "export", "synthetic:frames=400,cameras=1",
                                str(out), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 240
    while not out.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.exists() and process.poll() is None, "the export did not start writing its bag"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]


def test_calibration_files_for_the_nodes_are_plain_finite_data(tmp_path):
    """The same file rules for the calibration file the live nodes read (core function, no CLI command reads it)."""
    from clip2scene_core.calibration import CalibrationError, load_calibration

    entry = "{parent: base_link, child: lidar, translation: [%s, 0, 1.8], rotation: [0, 0, 0, 1]}"
    cases = {"nan.yaml": ("transforms: [" + entry % ".nan" + "]\n", "3 finite numbers"),
             "inf.yaml": ("transforms: [" + entry % "-.inf" + "]\n", "3 finite numbers"),
             "alias.yaml": ("a: &t " + entry % "0" + "\ntransforms: [*t]\n", "anchors and aliases"),
             "tag.yaml": ("transforms: !!python/tuple []\n", "!!python/tuple values are not accepted")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(CalibrationError, match=message):
            load_calibration(tmp_path / name)
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(CalibrationError, match="not a regular file"):
        load_calibration(tmp_path / "fifo.yaml")
    (tmp_path / "good.yaml").write_text("transforms: [" + entry % "0.5" + "]\n")
    assert len(load_calibration(tmp_path / "good.yaml")[1]) == 1


def test_training_on_an_empty_sweep_names_it(tmp_path):
    """A sweep with no points (a LiDAR dropout recorded) in pretraining or fine-tuning data (in-process: no source
    string makes one)."""
    from clip2scene_core.data import FrameList, SourceError, open_source
    from clip2scene_core.finetune import FinetuneConfig, finetune
    from clip2scene_core.student.checkpoint import StudentModel
    from clip2scene_core.student.network import Student, StudentConfig
    from clip2scene_core.teacher import build_teacher
    from clip2scene_core.teacher.text import HashTextEncoder
    from clip2scene_core.train import Pretrainer, TrainConfig
    from clip2scene_core.vocabulary import load_vocabulary

    frame = open_source("synthetic:frames=1,seed=3,cameras=1,width=64,height=48,beams=8")[0]
    empty = FrameList([frame.select(frame.points[:, 0] > 1e9)])
    vocabulary = load_vocabulary("nuscenes")
    model = StudentModel(Student(StudentConfig(preset="tiny", embed_dim=512)), vocabulary, HashTextEncoder())
    with pytest.raises(SourceError, match="has no points"):
        finetune(model, empty, vocabulary, FinetuneConfig(labels_fraction=1.0, epochs=1), tmp_path, {}, progress=False)
    trainer = Pretrainer([empty], build_teacher("noisy:0.0", vocabulary, text_encoder="hash"),
                         StudentConfig(preset="tiny"), TrainConfig(epochs=1, batch_size=1, sweeps=1), tmp_path,
                         torch.device("cpu"), progress=False)
    with pytest.raises(SourceError, match="has no points"):
        trainer.run()
