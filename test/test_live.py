"""The live pipeline (node and replay share it) on rosbags messages, and `clip2scene replay` end to end."""

import dataclasses
import json
from types import SimpleNamespace as NS

import numpy as np
import pytest

from clip2scene_core import messages as conv
from clip2scene_core.calibration import frame_transforms
from clip2scene_core.cli import main
from clip2scene_core.data import open_source
from clip2scene_core.data.rosbag2 import TYPESTORE, BagLayout, _header, _image_msg, cloud_message, write_bag
from clip2scene_core.geometry import invert, project
from clip2scene_core.live import LivePipeline
from clip2scene_core.replay import replay
from clip2scene_core.segmenter import Segmenter
from clip2scene_core.teacher import build_teacher
from clip2scene_core.tf_tree import TransformTree, add_tf_message
from clip2scene_core.vocabulary import load_vocabulary

SOURCE = "synthetic:frames=3,seed=5,cameras=2,width=128,height=72"


@pytest.fixture(scope="module")
def frames():
    return list(open_source(SOURCE))


@pytest.fixture(scope="module")
def vocabulary():
    return load_vocabulary("nuscenes")


def messages_of(frame):
    """(cloud, {camera: (image, info, {kind: label or instance image})}) as rosbags messages."""
    types = TYPESTORE.types
    cloud = cloud_message(conv.encode_cloud(frame.points, frame.fields, frame.labels), frame.stamp_ns, frame.frame_id)
    cameras = {}
    for camera in frame.cameras:
        header = _header(camera.stamp_ns, camera.optical_frame)
        info = conv.camera_info_values(camera.intrinsics, camera.distortion_model, camera.distortion, camera.width,
                                       camera.height)
        roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        cameras[camera.name] = (
            _image_msg(header, camera.image),
            types["sensor_msgs/msg/CameraInfo"](header=header, binning_x=0, binning_y=0, roi=roi, **info),
            {kind: _image_msg(header, getattr(camera, kind)) for kind in conv.PIXEL_IMAGES})
    return cloud, cameras


def calibration_of(frame) -> TransformTree:
    tree = TransformTree()
    for parent, child, T in frame_transforms(frame):
        tree.add_static(parent, child, T)
    return tree


def test_pipeline_pairs_decodes_and_segments(frames, vocabulary):
    teacher = build_teacher("labels", vocabulary, text_encoder="hash", strict=False)
    names = [c.name for c in frames[0].cameras]
    pipeline = LivePipeline(Segmenter(vocabulary, "teacher", teacher=teacher), names, calibration_of(frames[0]),
                            timeout_ms=None)
    results, released_by = [], []
    for frame in frames:
        cloud, cameras = messages_of(frame)
        results += pipeline.add_cloud(cloud, frame.stamp_ns)
        for name, (image, info, pixels) in cameras.items():
            pipeline.add_camera_info(name, info)
            results += pipeline.add_image(name, image, frame.stamp_ns)
            for kind, msg in pixels.items():  # label, then instance image, after the image, as live
                released = pipeline.add_label_image(name, msg, frame.stamp_ns, kind)
                results += released
                released_by += [(name, kind)] * len(released)
    results += pipeline.flush(frames[-1].stamp_ns)
    assert [r.frame.stamp_ns for r in results] == [f.stamp_ns for f in frames]
    # Each sweep waited for its last camera's instance image, once instance images had been seen.
    assert released_by == [(names[-1], "instance_image")] * len(frames)
    for result, frame in zip(results, frames):
        assert np.array_equal(result.frame.points, frame.points) and result.cameras == names
        for got, want in zip(result.frame.cameras, frame.cameras):
            assert np.allclose(got.lidar_to_camera, want.lidar_to_camera, atol=1e-6)
            assert np.array_equal(got.label_image, want.label_image)
            assert got.instance_image.max() >= 2**16 and np.array_equal(got.instance_image, want.instance_image)
        truth = vocabulary.raw_to_class(frame.labels)
        seen = result.segmentation.seen & (truth >= 0)
        assert (result.segmentation.labels[seen] == truth[seen]).mean() > 0.9
        assert {"decode", "teacher", "projection"} <= set(result.timings_ms)


def test_rectified_cameras_take_p_and_a_stereo_baseline(frames, vocabulary):
    """A camera named rectified uses P (no distortion, Tx as a baseline); the others K and D, as before."""
    teacher = build_teacher("labels", vocabulary, text_encoder="hash", strict=False)
    first, second = [c.name for c in frames[0].cameras]
    pipeline = LivePipeline(Segmenter(vocabulary, "teacher", teacher=teacher), [first, second],
                            calibration_of(frames[0]), timeout_ms=None, rectified=[second])
    frame = frames[0]
    cloud, cameras = messages_of(frame)
    K = frame.cameras[1].intrinsics
    P = np.zeros((3, 4))
    P[:, :3] = K
    P[0, 3] = -K[0, 0] * 0.3  # the right camera of a 0.3 m stereo pair
    for name, (image, info, _) in cameras.items():
        distorted = {"d": np.array([-0.2, 0.05, 0, 0, 0]), "distortion_model": "plumb_bob", "p": P.ravel()}
        pipeline.add_camera_info(name, TYPESTORE.types["sensor_msgs/msg/CameraInfo"](**{**info.__dict__,
                                                                                        **distorted}))
    results = pipeline.add_cloud(cloud, frame.stamp_ns)
    for name, (image, _, _) in cameras.items():
        results += pipeline.add_image(name, image, frame.stamp_ns)
    results += pipeline.flush(frame.stamp_ns)
    raw, rectified = results[0].frame.cameras
    assert raw.distortion_model == "plumb_bob" and rectified.distortion_model == "none"
    assert np.allclose(rectified.intrinsics, K)
    want = frame.cameras[1].lidar_to_camera.copy()
    want[0, 3] -= 0.3
    assert np.allclose(rectified.lidar_to_camera, want, atol=1e-6)


def test_extrinsics_from_live_tf_with_ego_motion_else_from_the_calibration(frames, vocabulary):
    """/tf_static and /tf (a live buffer) win over the calibration file where they connect the camera; the image,
    40 ms older than its sweep, is compensated for the vehicle's motion; which source was used is said once."""
    frame = frames[0]
    name = frame.cameras[0].name
    calibration = calibration_of(frame)
    lidar_frame = frame.frame_id or "lidar"
    ego = calibration.root(lidar_frame, static_only=True)
    live = TransformTree(tolerance_ns=0, buffer_ns=10**10)
    for (parent, child), T in calibration.static.items():
        live.add_static(parent, child, T)
    for i in range(-10, 11):  # 10 m/s along x around the sweep's stamp
        pose = np.eye(4)
        pose[0, 3] = 0.1 * i
        live.add_dynamic("odom", ego, frame.stamp_ns + i * 10_000_000, pose)
    cloud, cameras = messages_of(frame)
    image, info, _ = cameras[name]
    older = TYPESTORE.types["sensor_msgs/msg/Image"](**{**image.__dict__, "header": _header(
        frame.stamp_ns - 40_000_000, image.header.frame_id)})

    def run(tf):
        pipeline = LivePipeline(None, [name], calibration, timeout_ms=None, tf=tf)
        pipeline.add_camera_info(name, info)
        results = pipeline.add_cloud(cloud, frame.stamp_ns) + pipeline.add_image(name, older, frame.stamp_ns)
        results += pipeline.flush(frame.stamp_ns)
        return results[0].frame.cameras[0].lidar_to_camera, list(pipeline.stats.notices)

    moved, notices = run(live)
    assert notices == [f"camera {name}: {image.header.frame_id} -> {lidar_frame} from /tf_static"]
    static, notices = run(None)
    assert notices == [f"camera {name}: {image.header.frame_id} -> {lidar_frame} from calibration_file"]
    assert np.allclose(static, frame.cameras[0].lidar_to_camera, atol=1e-6)
    # the vehicle moved 0.4 m forward between the image and the sweep: a LiDAR point is 0.4 m further ahead
    # of where the camera was than of where it is now
    point = np.array([10.0, 0.0, 0.0, 1.0])
    assert np.isclose(np.linalg.norm((moved @ point - static @ point)[:3]), 0.4, atol=1e-6)


def with_camera_offsets(frame, offsets_ns: list[int]):
    """frame with its cameras offsets_ns from the sweep's stamp, the vehicle moved on at the sweep's velocity (the
    mounts unchanged): each camera's ego pose and its lidar_to_camera through the world."""
    velocity = frame.ego_pose[:3, :3] @ np.array([8.0, 0.0, 0.0])  # m/s along the vehicle's heading
    cameras = []
    for camera, offset in zip(frame.cameras, offsets_ns):
        pose = frame.ego_pose.copy()
        pose[:3, 3] += velocity * offset * 1e-9
        camera_to_ego = frame.lidar_to_ego @ invert(camera.lidar_to_camera)  # the mount (rendered at the sweep)
        moved = invert(camera_to_ego) @ invert(pose) @ frame.ego_pose @ frame.lidar_to_ego
        cameras.append(dataclasses.replace(camera, stamp_ns=frame.stamp_ns + offset, ego_pose=pose,
                                           lidar_to_camera=moved))
    return dataclasses.replace(frame, cameras=cameras)


def test_a_moving_drive_with_camera_offsets_projects_as_the_bag_reader_does(tmp_path, frames):
    """Cameras 30 ms before and 20 ms after each sweep of a drive at 8 m/s, recorded with /tf and /tf_static: the
    live pipeline, given the bag's transforms as the node receives them, puts every point within 1 px of where the
    bag reader puts it; the mounts alone put them pixels away."""
    drive = [with_camera_offsets(frame, [-30_000_000, 20_000_000]) for frame in frames]
    source = open_source(f"bag:{write_bag(drive, tmp_path / 'drive')}")
    tree = TransformTree(tolerance_ns=0, buffer_ns=10**10)
    for reader in source._open():
        tf = [c for c in reader.connections if c.topic in ("/tf", "/tf_static")]
        for connection, _, raw in reader.messages(connections=tf):
            add_tf_message(tree, TYPESTORE.deserialize_cdr(raw, connection.msgtype), connection.topic == "/tf_static")
    names = [c.name for c in frames[0].cameras]
    pipeline = LivePipeline(None, names, None, timeout_ms=None, tf=tree)
    results = []
    for frame in drive:
        cloud, cameras = messages_of(frame)
        results += pipeline.add_cloud(cloud, frame.stamp_ns)
        for name, (image, info, _) in cameras.items():
            pipeline.add_camera_info(name, info)
            results += pipeline.add_image(name, image, frame.stamp_ns)
    results += pipeline.flush(drive[-1].stamp_ns)
    assert len(results) == len(drive) == len(source)
    worst, static_worst = 0.0, 0.0
    for result, read, original in zip(results, source, frames):
        assert [c.name for c in result.frame.cameras] == names
        for live, reader_camera, mount in zip(result.frame.cameras, read.cameras, original.cameras):
            want = project(read.points, reader_camera)
            got = project(read.points, live)
            static = project(read.points, dataclasses.replace(reader_camera, lidar_to_camera=mount.lidar_to_camera))
            assert want.valid.sum() > 100 and np.array_equal(got.valid, want.valid)
            worst = max(worst, float(np.abs(got.uv - want.uv)[want.valid].max()))
            static_worst = max(static_worst, float(np.abs(static.uv - want.uv)[want.valid].max()))
    print(f"live vs bag reader {worst:.4f} px; mounts alone {static_worst:.1f} px")
    assert worst < 1.0 and static_worst > 5.0, (worst, static_worst)


def test_pipeline_skips_bad_messages_and_keeps_going(frames, vocabulary):
    teacher = build_teacher("labels", vocabulary, text_encoder="hash", strict=False)
    name = frames[0].cameras[0].name
    pipeline = LivePipeline(Segmenter(vocabulary, "teacher", teacher=teacher), [name], calibration_of(frames[0]),
                            timeout_ms=50.0)
    cloud, cameras = messages_of(frames[0])
    image, info, _ = cameras[name]
    zero_k = TYPESTORE.types["sensor_msgs/msg/CameraInfo"](**{**info.__dict__, "k": np.zeros(9)})
    pipeline.add_camera_info(name, zero_k)
    assert pipeline.stats.rejected_infos == 1 and "no valid focal length" in pipeline.stats.errors[-1]
    truncated = NS(**{**cloud.__dict__, "data": cloud.data[:-5]})
    assert pipeline.add_cloud(truncated, 0) == [] and pipeline.poll(10**8) == []
    assert pipeline.stats.skipped_clouds == 1 and "truncated" in pipeline.stats.errors[-1]
    # No valid camera_info yet: the sweep is still segmented, without that camera.
    results = pipeline.add_cloud(cloud, 2 * 10**8) + pipeline.add_image(name, image, 2 * 10**8)
    results += pipeline.flush(3 * 10**8)
    assert len(results) == 1 and results[0].cameras == [] and pipeline.stats.skipped_images == 1
    pipeline.add_camera_info(name, info)
    cloud, cameras = messages_of(frames[1])
    image = cameras[name][0]
    small = NS(**{**image.__dict__, "width": 64, "step": 64 * 3, "data": image.data[:64 * 3 * image.height]})
    results = pipeline.add_cloud(cloud, 4 * 10**8) + pipeline.add_image(name, small, 4 * 10**8)
    results += pipeline.flush(5 * 10**8)
    assert results[0].cameras == [] and "camera_info says" in " ".join(pipeline.stats.errors)


def test_replay_command_evaluates_and_writes_labelled_clouds(tmp_path, frames):
    bag = write_bag(frames, tmp_path / "bag", layout=BagLayout(compressed=False))
    status = main(["replay", str(bag), "--teacher", "labels", "--vocabulary", "nuscenes", "--out-bag",
                   str(tmp_path / "out"), "--out", str(tmp_path), "--config", str(config_file(tmp_path))])
    assert status == 0
    report = json.loads((tmp_path / "replay.json").read_text())
    assert report["frames"] == 3 and report["in_view"]["miou"] > 0.7
    assert {"decode", "teacher", "projection"} <= set(report["latency_ms"])
    labelled = open_source(f"bag:{tmp_path / 'out'}?label_field=label")
    assert len(labelled) == 3 and np.array_equal(labelled[0].points, frames[0].points)


def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("teacher: {text_encoder: hash}\n")
    return path


def test_replay_in_student_mode_counts_every_frame(tmp_path, frames, vocabulary):
    from clip2scene_core.student.checkpoint import StudentModel
    from clip2scene_core.student.network import Student, StudentConfig
    from clip2scene_core.teacher.text import HashTextEncoder

    bag = write_bag(frames, tmp_path / "bag")
    model = StudentModel(Student(StudentConfig(preset="tiny")), vocabulary, HashTextEncoder())
    segmenter = Segmenter(vocabulary, "student", student=model)
    segmented, segment = [], segmenter.segment
    segmenter.segment = lambda frame: segmented.append(frame) or segment(frame)
    report = replay(bag, segmenter, progress=False)
    assert report.frames == len(segmented) == 3 and report.evaluation.all_points.coverage() == 1.0
    for got, want in zip(segmented, frames):  # label and instance images from the bag went into the pipeline
        assert [c.name for c in got.cameras] == [c.name.lower() for c in want.cameras]
        for got_camera, want_camera in zip(got.cameras, want.cameras):
            assert np.array_equal(got_camera.label_image, want_camera.label_image)
            assert np.array_equal(got_camera.instance_image, want_camera.instance_image)
    assert "student" in report.percentiles()


def test_fusion_takes_the_teacher_where_it_sees_and_is_surer(frames, vocabulary):
    from clip2scene_core.student.checkpoint import StudentModel
    from clip2scene_core.student.network import Student, StudentConfig
    from clip2scene_core.teacher.text import HashTextEncoder

    frame = frames[0]
    teacher = build_teacher("labels", vocabulary, text_encoder="hash")
    student = StudentModel(Student(StudentConfig(preset="tiny")), vocabulary, HashTextEncoder())
    fused = Segmenter(vocabulary, "fusion", teacher=teacher, student=student).segment(frame)
    alone_student = Segmenter(vocabulary, "student", student=student).segment(frame)
    alone_teacher = Segmenter(vocabulary, "teacher", teacher=teacher).segment(frame)
    taken = alone_teacher.seen & (alone_teacher.labels >= 0)  # the label teacher is certain (confidence 1)
    assert np.array_equal(fused.labels[taken], alone_teacher.labels[taken])
    assert np.array_equal(fused.labels[~fused.seen], alone_student.labels[~fused.seen])
    assert (fused.labels >= 0).all() and {"student", "teacher", "projection"} <= set(fused.timings_ms)
