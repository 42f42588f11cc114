"""Label consolidation: one frame's error is outvoted by the other frames that saw the same place."""

import numpy as np
import pytest

from clip2scene_core.consolidation import LabelMap, drive_of, voxel_keys
from clip2scene_core.data import FrameList, open_source
from clip2scene_core.frame import Frame
from clip2scene_core.student.network import StudentConfig
from clip2scene_core.teacher import build_teacher
from clip2scene_core.train import Pretrainer, TrainConfig
from clip2scene_core.vocabulary import IGNORE, load_vocabulary


def test_majority_per_voxel_with_one_vote_per_frame():
    votes = LabelMap(voxel_m=1.0, num_classes=4, min_views=2)
    place = np.array([[0.5, 0.5, 0.5]])
    votes.add(np.repeat(place, 50, axis=0), np.full(50, 3))            # one frame, many points: still one vote
    votes.add(place, np.array([1]))
    votes.add(place, np.array([1]))
    votes.add(np.array([[5.5, 0.5, 0.5]]), np.array([2]))               # seen by a single frame
    votes.add(np.array([[9.5, 0.5, 0.5]]), np.array([IGNORE]))          # unlabelled points do not vote
    votes.finish()
    query = np.array([[0.1, 0.9, 0.2], [5.5, 0.5, 0.5], [9.5, 0.5, 0.5], [20.0, 0, 0]])
    assert votes.lookup(query).tolist() == [1, IGNORE, IGNORE, IGNORE]
    assert LabelMap(1.0, 4, min_views=1).lookup(query).tolist() == [IGNORE] * 4  # nothing voted yet
    single = LabelMap(1.0, 4, min_views=1)
    single.add(np.array([[5.5, 0.5, 0.5]]), np.array([2]))
    assert single.finish().lookup(query).tolist() == [IGNORE, 2, IGNORE, IGNORE]


def test_a_frame_split_between_classes_in_one_voxel_splits_its_vote():
    votes = LabelMap(voxel_m=1.0, num_classes=3, min_views=1)
    votes.add(np.zeros((4, 3)) + 0.5, np.array([0, 0, 0, 2]))   # 0.75 for class 0, 0.25 for class 2
    votes.add(np.zeros((1, 3)) + 0.5, np.array([2]))            # 1 for class 2
    assert votes.finish().lookup(np.zeros((1, 3)) + 0.5).tolist() == [2]


def test_voxel_keys_are_distinct_per_axis_and_refuse_far_points():
    keys = voxel_keys(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]], float), 1.0)
    assert len(set(keys.tolist())) == 5
    with pytest.raises(ValueError, match="consolidation_voxel_m"):
        voxel_keys(np.array([[1e7, 0, 0]]), 0.25)


def test_drive_of_frame_names():
    assert drive_of(Frame(points=np.zeros((0, 3)), stamp_ns=0, name="synthetic-3/000012")) == "synthetic-3"
    assert drive_of(Frame(points=np.zeros((0, 3)), stamp_ns=0, name="scene-0061/abc")) == "scene-0061"


def test_consolidated_labels_correct_a_noisy_teacher_on_a_drive(tmp_path):
    """Frames of one drive seen by a 40 % noisy teacher: the voted labels of the static world agree with the
    truth more often than any single view's, and reach points no camera of their own frame sees."""
    vocabulary = load_vocabulary("nuscenes")
    frames = FrameList(list(open_source("synthetic:frames=24,seed=4,cameras=2,width=128,height=72,beams=16,"
                                        "moving=false,step=3")))
    teacher = build_teacher("noisy:0.4", vocabulary, text_encoder="hash")
    config = TrainConfig(sweeps=1, consolidate=True, consolidation_min_views=2, epochs=1)
    trainer = Pretrainer([frames], teacher, StudentConfig(preset="tiny"), config, tmp_path, "cpu", progress=False)
    trainer.consolidate()
    assert list(trainer.label_maps) == [(0, "synthetic-4")]
    label_map = trainer.label_maps[(0, "synthetic-4")]
    from clip2scene_core.geometry import transform_points
    from clip2scene_core.samples import pair_frame

    single, voted, reached = [], [], []
    for frame in frames:
        truth = vocabulary.raw_to_class(frame.labels)
        own = pair_frame(frame, teacher, 1, None).labels
        consolidated = label_map.lookup(transform_points(frame.lidar_pose, frame.points))
        both = (own != IGNORE) & (consolidated != IGNORE)
        single.append((own[both] == truth[both]).mean())
        voted.append((consolidated[both] == truth[both]).mean())
        reached.append(((own == IGNORE) & (consolidated != IGNORE)).sum())
    assert np.mean(voted) > np.mean(single) + 0.07, (np.mean(voted), np.mean(single))
    assert sum(reached) > 0
