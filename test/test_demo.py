"""`make demo` end to end, shortened (a 6-frame recording, one epoch): every step runs as in the demo."""

import json
import subprocess
import sys

import pytest

from ros_helpers import ROOT

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_the_demo_runs_the_whole_loop(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "clip2scene_ros.demo", "--out", str(out), "--frames", "6",
                             "--epochs", "1"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recorded_pairs"] == 6 and summary["live_sweeps"] >= 1
    assert summary["live_sweeps"] + summary["live_dropped"] == 8  # the newest sweep is served, older ones dropped
    for key in ("teacher_miou_all", "teacher_miou_in_view", "student_miou_all", "student_miou_in_view"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["teacher"] == "cliplike"
    assert summary["teacher_miou_in_view"] > 0.2  # the CLIP-like proxy: about 0.35 in view on held-out drives
    assert 0.0 <= summary["teacher_miou_filled_all"] <= 1.0
    for picture in ("confusion_all.png", "iou.png", "frame.png"):
        assert (out / "evaluation" / picture).is_file()
    assert (out / "student" / "losses.png").is_file() and any((out / "heldout_labelled").rglob("*.mcap"))
    assert "mIoU all points" in result.stdout
