"""Test environment: offline, DDS isolated, deterministic; fixtures for the shared real samples."""

import fcntl
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLIP2SCENE_SHARED_DATA", ROOT.parent / "shared" / "data"))

# No test touches the network: open_clip/Hugging Face must use local files only.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# DDS stays on this machine (shared memory) and in a domain of this test run's own.
os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "SHM"


def _claim_domain() -> tuple[str, object]:
    """A ROS domain id in 100..199 no other test run on this machine holds: each run keeps a lock file open on
    its id for as long as it lives (ids derived from the pid alone can coincide)."""
    start = os.getpid() % 100
    for step in range(100):
        domain = 100 + (start + step) % 100
        handle = open(Path(tempfile.gettempdir()) / f"clip2scene-ros-domain-{domain}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return str(domain), handle
        except OSError:
            handle.close()
    raise RuntimeError("all ROS domain ids 100..199 are held by other test runs: set ROS_DOMAIN_ID")


if "ROS_DOMAIN_ID" not in os.environ:
    os.environ["ROS_DOMAIN_ID"], _DOMAIN_LOCK = _claim_domain()
os.environ.setdefault("ROS_LOG_DIR", str(ROOT / "build" / "ros_log"))
os.environ.setdefault("MPLBACKEND", "Agg")
# A sourced ROS 2 install sets AMENT_PREFIX_PATH; a venv of the ROS 2 wheels is its own ament prefix (make setup
# registers the package's interfaces there), so the ament index works in it unsourced.
if not os.environ.get("AMENT_PREFIX_PATH") and (Path(sys.prefix) / "share" / "ament_index").is_dir():
    os.environ["AMENT_PREFIX_PATH"] = sys.prefix


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: the real samples live beside the repository, never inside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sensor samples not found at {SHARED_DATA} (set CLIP2SCENE_SHARED_DATA to their folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """A folder for pictures a person may want to look at after the run (build/test-artifacts)."""
    path = ROOT / "build" / "test-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def ros_node():
    """An rclpy node in the test process, on this run's own DDS domain."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup installs the ROS 2 wheels)")
    rclpy.init()
    node = rclpy.create_node(f"clip2scene_test_{os.getpid()}")
    yield node
    node.destroy_node()
    rclpy.shutdown()


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    """A tiny student checkpoint trained one epoch on two synthetic frames: enough to run nodes, not to be accurate."""
    import torch

    from clip2scene_core.data import FrameList, open_source
    from clip2scene_core.student.network import StudentConfig
    from clip2scene_core.teacher import build_teacher
    from clip2scene_core.train import Pretrainer, TrainConfig
    from clip2scene_core.vocabulary import load_vocabulary

    out = tmp_path_factory.mktemp("tiny_student")
    vocabulary = load_vocabulary("nuscenes")
    frames = FrameList(open_source("synthetic:frames=2,seed=1,cameras=2,width=96,height=64,beams=16"))
    Pretrainer([frames], build_teacher("noisy:0.0", vocabulary, text_encoder="hash"), StudentConfig(preset="tiny"),
               TrainConfig(epochs=1, batch_size=1, sweeps=1, max_paired=2000, optimizer="adamw", lr=1e-3), out,
               torch.device("cpu"), extra={"vocabulary": vocabulary.to_dict()}, progress=False).run()
    return out / "checkpoints" / "last.pt"
