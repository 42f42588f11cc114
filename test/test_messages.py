"""Message conversions, on the rosbags message classes and on rclpy's (both must decode alike)."""

import io
import pickle
import zlib
from types import SimpleNamespace as NS

import numpy as np
import pytest
from PIL import Image

from clip2scene_core import messages as conv
from clip2scene_core.tf_tree import TransformError, TransformTree, camera_from_lidar
from frames import yaw_pose


def cloud(fields, point_step, data, width, height=1, row_step=None, bigendian=False):
    return NS(header=NS(stamp=NS(sec=12, nanosec=5), frame_id="lidar"), height=height, width=width,
              fields=[NS(name=f[0], offset=f[1], datatype=f[2], count=1) for f in fields], is_bigendian=bigendian,
              point_step=point_step, row_step=row_step if row_step is not None else point_step * width,
              data=data, is_dense=False)


def test_cloud_round_trip_keeps_points_fields_and_labels():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(100, 3)).astype(np.float32)
    fields = {"intensity": rng.random(100).astype(np.float32), "ring": rng.integers(0, 32, 100).astype(np.uint16),
              "time": rng.random(100).astype(np.float32) * 0.1}
    labels = rng.integers(0, 300, 100)
    layout = conv.encode_cloud(points, fields, labels)
    decoded = conv.decode_cloud(cloud(layout.fields, layout.point_step, layout.data, layout.width))
    assert np.array_equal(decoded.points, points) and np.array_equal(decoded.labels, labels)
    for name, values in fields.items():
        assert np.array_equal(decoded.fields[name], values) and decoded.fields[name].dtype == values.dtype
    assert decoded.stamp_ns == 12_000_000_005 and decoded.frame_id == "lidar"


def test_outputs_keep_the_input_fields_beside_the_labels():
    """A driver's cloud (x y z, uint8 intensity, uint16 ring, float64 time, a ground-truth label) with a NaN point:
    the labelled output keeps every input field, named and typed as sent, for the finite points in decode order."""
    n = 6
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "u1"), ("ring", "<u2"),
                      ("time", "<f8"), ("label", "<u4")])
    values = np.zeros(n, dtype)
    for axis in "xyz":
        values[axis] = np.arange(n)
    values["y"][2] = np.nan
    values["intensity"], values["ring"], values["time"] = np.arange(n) * 10, np.arange(n) + 100, np.arange(n) * 0.01
    values["label"] = 7
    codes = {"<f4": 7, "u1": 2, "<u2": 4, "<f8": 8, "<u4": 6}
    msg = cloud([(name, dtype.fields[name][1], codes[dtype.fields[name][0].str.replace("|", "")])
                 for name in dtype.names], dtype.itemsize, values.view(np.uint8), width=n)
    decoded = conv.decode_cloud(msg)
    records = conv.input_records(msg)
    assert len(records) == len(decoded.points) == 5
    labels = np.arange(5, dtype=np.uint16)
    layout = conv.encode_beside_input(records, {"label": labels, "score": np.full(5, 0.5, np.float32)})
    assert [f[0] for f in layout.fields] == ["x", "y", "z", "intensity", "ring", "time", "label", "score"]
    out = np.frombuffer(bytes(layout.data), np.dtype([(f[0], records.dtype[f[0]] if f[0] in records.dtype.names
                                                       and f[0] != "label" else np.float32 if f[0] == "score"
                                                       else np.uint16) for f in layout.fields]))
    keep = [0, 1, 3, 4, 5]
    assert out["ring"].tolist() == values["ring"][keep].tolist() and out["intensity"].dtype == np.uint8
    assert np.array_equal(out["time"], values["time"][keep]) and out["label"].tolist() == labels.tolist()
    assert np.array_equal(np.stack([out[a] for a in "xyz"], 1), decoded.points)


def test_organised_cloud_with_padding_nans_and_big_endian():
    # 2 rows x 3 points, point_step 16 (x y z + 4 pad bytes), rows padded to 56 bytes.
    dtype = np.dtype({"names": ["x", "y", "z"], "formats": [">f4"] * 3, "offsets": [0, 4, 8], "itemsize": 16})
    values = np.zeros((2, 3), dtype)
    for axis_index, axis in enumerate("xyz"):
        values[axis] = np.arange(6).reshape(2, 3) + axis_index * 10
    values["x"][1, 2] = np.nan
    rows = np.zeros((2, 56), np.uint8)
    rows[:, :48] = values.view(np.uint8).reshape(2, 48)
    msg = cloud([("x", 0, 7), ("y", 4, 7), ("z", 8, 7)], 16, rows.ravel(), width=3, height=2, row_step=56,
                bigendian=True)
    decoded = conv.decode_cloud(msg)
    assert decoded.dropped == 1 and len(decoded.points) == 5
    assert decoded.points[:, 2].tolist() == [20, 21, 22, 23, 24]


@pytest.mark.parametrize("change, message", [
    (dict(fields=[NS(name="x", offset=0, datatype=7, count=1)]), "no y/z field"),
    (dict(point_step=8), "beyond point_step"),
    (dict(data=np.zeros(10, np.uint8)), "truncated"),
    (dict(row_step=4), "row_step"),
    # x y z intensity pad: each change stays inside the 20-byte point.
    (dict(fields=[NS(name=n, offset=o, datatype=7, count=2 if n == "intensity" else 1)
                  for n, o in zip(("x", "y", "z", "intensity", "pad"), (0, 4, 8, 12, 16))]),
     "field 'intensity' has count 2"),
    (dict(fields=[NS(name=n, offset=o, datatype=7, count=1) for n, o in zip(("x", "y", "z", "intensity", "pad"),
                                                                            (0, 2, 8, 12, 16))]),
     "field 'y' starts at byte 2, inside field 'x'"),
    (dict(fields=[NS(name=n, offset=o, datatype=7, count=1) for n, o in zip(("x", "y", "z", "z", "pad"),
                                                                            (0, 4, 8, 12, 16))]),
     "field 'z' appears 2 times"),
])
def test_malformed_clouds_are_named(change, message):
    layout = conv.encode_cloud(np.zeros((4, 3), np.float32), {"intensity": np.zeros(4)},
                               extra={"pad": np.zeros(4, np.float32)})
    msg = cloud(layout.fields, layout.point_step, layout.data, 4)
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(conv.MessageError, match=message):
        conv.decode_cloud(msg, what="/points")


def test_time_fields_become_relative_seconds():
    points = np.zeros((2, 3), np.float32)
    absolute = conv.encode_cloud(points, extra={"timestamp": np.array([12.000000005, 12.05])})
    assert np.allclose(conv.decode_cloud(cloud(absolute.fields, absolute.point_step, absolute.data, 2))
                       .fields["time"], [0, 0.05], atol=1e-6)
    nanoseconds = conv.encode_cloud(points, extra={"t": np.array([0, 50_000_000], np.uint32)})
    assert np.allclose(conv.decode_cloud(cloud(nanoseconds.fields, nanoseconds.point_step, nanoseconds.data, 2))
                       .fields["time"], [0, 0.05])


def image(encoding, array, step=None, bigendian=False):
    height, width = array.shape[:2]
    raw = np.ascontiguousarray(array).view(np.uint8).reshape(height, -1)
    step = step or raw.shape[1]
    padded = np.zeros((height, step), np.uint8)
    padded[:, :raw.shape[1]] = raw
    return NS(height=height, width=width, encoding=encoding, is_bigendian=bigendian, step=step, data=padded.ravel())


def test_image_encodings_decode_to_rgb():
    rgb = np.random.default_rng(1).integers(0, 255, (4, 6, 3), dtype=np.uint8)
    assert np.array_equal(conv.decode_image(image("rgb8", rgb, step=20)), rgb)
    assert np.array_equal(conv.decode_image(image("bgr8", rgb[:, :, ::-1].copy())), rgb)
    rgba = np.concatenate([rgb, np.full((4, 6, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(conv.decode_image(image("rgba8", rgba)), rgb)
    mono = rgb[:, :, 0].copy()
    assert np.array_equal(conv.decode_image(image("mono8", mono)), np.repeat(mono[:, :, None], 3, 2))
    deep = (np.arange(24).reshape(4, 6) * 1000).astype(">u2")
    decoded = conv.decode_image(image("mono16", deep, bigendian=True))
    assert decoded.shape == (4, 6, 3) and decoded[0, 0, 0] == 0 and decoded[-1, -1, 0] == 255
    bayer = np.zeros((4, 6), np.uint8)
    bayer[0::2, 0::2], bayer[0::2, 1::2], bayer[1::2, 0::2], bayer[1::2, 1::2] = 200, 100, 100, 50  # RGGB
    assert conv.decode_image(image("bayer_rggb8", bayer))[1, 1].tolist() == [200, 100, 50]


def test_compressed_images_and_corrupt_jpeg():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = [250, 10, 10]
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=fmt)
        decoded = conv.decode_image(NS(format=fmt.lower(), data=buffer.getvalue()))
        assert np.abs(decoded.astype(int) - rgb).mean() < 5
    with pytest.raises(conv.MessageError, match="cannot decode compressed image"):
        conv.decode_image(NS(format="jpeg", data=b"\xff\xd8\xff\xe0 not really a jpeg"), what="/cam/compressed")


def test_unsupported_encoding_and_short_data_are_named():
    with pytest.raises(conv.MessageError, match="unsupported image encoding 'yuv422'"):
        conv.decode_image(NS(height=2, width=2, encoding="yuv422", is_bigendian=0, step=4, data=b"\0" * 8))
    with pytest.raises(conv.MessageError, match="expected step x height"):
        conv.decode_image(NS(height=2, width=2, encoding="rgb8", is_bigendian=0, step=6, data=b"\0" * 8))


def test_label_images_round_trip():
    labels = np.random.default_rng(2).integers(0, 40, (5, 7))
    layout = conv.encode_image(labels)
    msg = NS(height=5, width=7, encoding=layout.encoding, is_bigendian=0, step=layout.step, data=layout.data)
    assert layout.encoding == "mono16" and np.array_equal(conv.decode_label_image(msg), labels)
    big = labels + 70000
    layout = conv.encode_image(big)
    msg = NS(height=5, width=7, encoding=layout.encoding, is_bigendian=0, step=layout.step, data=layout.data)
    assert layout.encoding == "32SC1" and np.array_equal(conv.decode_label_image(msg), big)


def test_camera_info_checks():
    good = NS(k=[500, 0, 320, 0, 500, 240, 0, 0, 1], d=[0.1, -0.05, 0, 0, 0], distortion_model="plumb_bob",
              width=640, height=480)
    intrinsics = conv.decode_camera_info(good)
    assert intrinsics.distortion_model == "plumb_bob" and intrinsics.K[0, 2] == 320
    with pytest.raises(conv.MessageError, match="no valid focal length"):
        conv.decode_camera_info(NS(k=[0] * 9, d=[], distortion_model="", width=1, height=1), what="/cam/camera_info")
    fisheye = conv.decode_camera_info(NS(k=good.k, d=[0.1] * 4, distortion_model="equidistant", width=1, height=1))
    assert fisheye.distortion_model == "equidistant" and fisheye.distortion.tolist() == [0.1] * 4
    rational = conv.decode_camera_info(NS(k=good.k, d=[0.1] * 8, distortion_model="rational_polynomial", width=1,
                                          height=1))
    assert rational.distortion.shape == (8,)
    with pytest.raises(conv.MessageError, match="'kannala_brandt' is not supported"):
        conv.decode_camera_info(NS(k=good.k, d=[0.1] * 4, distortion_model="kannala_brandt", width=1, height=1))
    with pytest.raises(conv.MessageError, match="8 distortion coefficients, but plumb_bob has 5"):
        conv.decode_camera_info(NS(k=good.k, d=[0.1] * 8, distortion_model="plumb_bob", width=1, height=1))
    assert conv.decode_camera_info(NS(k=good.k, d=[0] * 5, distortion_model="plumb_bob", width=1,
                                      height=1)).distortion_model == "none"


def test_rectified_topics_use_p_and_no_distortion():
    assert conv.is_rectified("/cam_front/image_rect_color/compressed") and conv.is_rectified("/cam/image_rect")
    assert not conv.is_rectified("/cam_front/image_raw/compressed") and not conv.is_rectified("/rect/image_raw")
    # A rectified right camera of a stereo pair: P's own focal length and principal point, Tx = -fx * baseline
    info = NS(k=[500, 0, 320, 0, 500, 240, 0, 0, 1], d=[-0.3, 0.1, 0, 0, 0], distortion_model="plumb_bob",
              p=[480, 0, 310, -480 * 0.12, 0, 480, 235, 0, 0, 0, 1, 0], width=640, height=480)
    raw = conv.decode_camera_info(info)
    assert raw.distortion_model == "plumb_bob" and raw.K[0, 0] == 500 and not np.any(raw.offset)
    rect = conv.decode_camera_info(info, rectified=True)
    assert rect.distortion_model == "none" and not np.any(rect.distortion)
    assert np.allclose(rect.K, [[480, 0, 310], [0, 480, 235], [0, 0, 1]]) and np.allclose(rect.offset, [-0.12, 0, 0])
    with pytest.raises(conv.MessageError, match="P .* has no valid focal length, but the image topic is rectified"):
        conv.decode_camera_info(NS(k=info.k, d=[], distortion_model="", p=[0] * 12, width=640, height=480),
                                rectified=True)


def test_sizes_and_values_that_would_break_later_stages_are_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = (9000).to_bytes(4, "big") * 2  # the IHDR's width and height, then its CRC
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    with pytest.raises(conv.MessageError, match="9000x9000 pixels is outside"):
        conv.decode_image(NS(format="png", data=bytes(data)), "png")
    with pytest.raises(conv.MessageError, match="outside 1..50000000 pixels"):
        conv.decode_image(NS(encoding="rgb8", height=10_000, width=10_000, step=30_000, is_bigendian=0,
                             data=b""), "raw")
    K = [100.0, 0, 50, 0, 100, 40, 0, 0, 1]
    with pytest.raises(conv.MessageError, match="holds NaN or inf"):
        conv.decode_camera_info(NS(k=K, d=[0.1, float("nan"), 0, 0, 0], distortion_model="plumb_bob", width=100,
                                   height=80))
    with pytest.raises(conv.MessageError, match="image size 0x80"):
        conv.decode_camera_info(NS(k=K, d=[], distortion_model="", width=0, height=80))
    with pytest.raises(conv.MessageError, match="NaN or infinite translation"):
        conv.transform_to_matrix(NS(x=float("nan"), y=0, z=0), NS(x=0, y=0, z=0, w=1))


def test_quaternion_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        T = conv.transform_to_matrix(NS(x=1, y=2, z=3), NS(x=q[0], y=q[1], z=q[2], w=q[3]))
        back = conv.transform_to_matrix(NS(x=1, y=2, z=3), NS(**dict(zip("xyzw", conv.matrix_to_quaternion(T)))))
        assert np.allclose(T, back) and np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3))


def test_transform_tree_chains_and_time():
    tree = TransformTree(tolerance_ns=10)
    tree.add_static("base_link", "lidar", yaw_pose(0, 1, 0, 2))
    tree.add_static("base_link", "camera", yaw_pose(np.pi / 2, 0.5, 0, 1.5))
    tree.add_dynamic("map", "base_link", 100, yaw_pose(0.0, 0, 0))
    tree.add_dynamic("map", "base_link", 200, yaw_pose(0.2, 10, 0))
    lidar_to_camera = tree.lookup("camera", "lidar")
    assert np.allclose(lidar_to_camera, np.linalg.inv(yaw_pose(np.pi / 2, 0.5, 0, 1.5)) @ yaw_pose(0, 1, 0, 2))
    assert tree.root("lidar", static_only=True) == "base_link" and tree.root("lidar") == "map"
    halfway = tree.lookup("map", "base_link", 150)
    assert np.allclose(halfway[:3, 3], [5, 0, 0]) and np.isclose(np.arctan2(halfway[1, 0], halfway[0, 0]), 0.1)
    assert np.allclose(tree.lookup("map", "lidar", 205), yaw_pose(0.2, 10, 0) @ yaw_pose(0, 1, 0, 2))
    with pytest.raises(TransformError, match="no transform within"):
        tree.lookup("map", "base_link", 1000)
    with pytest.raises(TransformError, match="no transform chain from 'lidar' to 'elsewhere'"):
        tree.lookup("elsewhere", "lidar")
    with pytest.raises(TransformError, match="a stamp is needed"):
        tree.lookup("map", "lidar")


def moving_vehicle(buffer_ns=None, tolerance_ns=0):
    """base_link driving along x at 10 m/s in odom (samples every 10 ms for 1 s), a LiDAR and a camera on it."""
    tree = TransformTree(tolerance_ns=tolerance_ns, buffer_ns=buffer_ns)
    tree.add_static("base_link", "lidar", yaw_pose(0, 1, 0, 2))
    tree.add_static("base_link", "camera", yaw_pose(np.pi / 2, 0.5, 0, 1.5))
    for i in range(101):
        tree.add_dynamic("odom", "base_link", i * 10_000_000, yaw_pose(0.001 * i, 0.1 * i, 0))
    return tree


def test_camera_from_lidar_folds_in_the_ego_motion_between_the_stamps():
    tree = moving_vehicle()
    lidar_stamp, camera_stamp = 500_000_000, 450_000_000
    world_point = np.array([20.0, 3.0, 1.0, 1.0])
    seen_by_lidar = np.linalg.inv(tree.lookup("odom", "lidar", lidar_stamp)) @ world_point
    seen_by_camera = np.linalg.inv(tree.lookup("odom", "camera", camera_stamp)) @ world_point
    T = camera_from_lidar(tree, "camera", camera_stamp, "lidar", lidar_stamp)
    assert np.allclose(T @ seen_by_lidar, seen_by_camera)
    assert not np.allclose(tree.lookup("camera", "lidar") @ seen_by_lidar, seen_by_camera, atol=0.1)  # 0.5 m off
    # mounts from one tree, motion from another (a calibration file and the vehicle's /tf)
    mounts = TransformTree()
    mounts.add_static("base_link", "lidar", yaw_pose(0, 1, 0, 2))
    mounts.add_static("base_link", "camera", yaw_pose(np.pi / 2, 0.5, 0, 1.5))
    assert np.allclose(camera_from_lidar(mounts, "camera", camera_stamp, "lidar", lidar_stamp, tree), T)
    assert np.allclose(camera_from_lidar(mounts, "camera", camera_stamp, "lidar", lidar_stamp),
                       tree.lookup("camera", "lidar"))  # no motion known: the mounts alone
    with pytest.raises(TransformError, match=r"'odom' -> 'base_link': no transform within 0.000 s of t=1.200 s "
                                             r"\(transforms cover 0.000 to 1.000 s\)"):
        camera_from_lidar(tree, "camera", 1_200_000_000, "lidar", lidar_stamp)


def test_a_live_tree_keeps_a_bounded_history_and_survives_pickling():
    tree = moving_vehicle(buffer_ns=200_000_000)
    track = tree.dynamic[("odom", "base_link")]
    assert track.stamps[0] == 800_000_000 and len(track.stamps) == 21  # 0.2 s before the newest sample
    with pytest.raises(TransformError, match="cover 0.800 to 1.000 s"):
        tree.lookup("odom", "base_link", 500_000_000)
    copy = pickle.loads(pickle.dumps(tree))
    assert np.allclose(copy.lookup("odom", "lidar", 900_000_000), tree.lookup("odom", "lidar", 900_000_000))
    copy.add_static("lidar", "extra", np.eye(4))  # the copy has a lock of its own


def test_rclpy_messages_decode_like_rosbags_ones():
    rclpy_conversions = pytest.importorskip("clip2scene_ros.conversions", reason="rclpy not installed")
    from clip2scene_core.frame import Camera
    from frames import make_frames
    frame = make_frames(1, points=50)[0]
    layout = conv.encode_cloud(frame.points, frame.fields, frame.labels)
    msg = rclpy_conversions.cloud_msg(layout, rclpy_conversions.header(frame.stamp_ns, "lidar"))
    decoded = conv.decode_cloud(msg)
    assert np.array_equal(decoded.points, frame.points) and np.array_equal(decoded.labels, frame.labels)
    camera: Camera = frame.cameras[0]
    header = rclpy_conversions.header(camera.stamp_ns, "cam")
    assert np.array_equal(conv.decode_image(rclpy_conversions.image_msg(camera.image, header)), camera.image)
    labels = conv.decode_label_image(rclpy_conversions.image_msg(camera.label_image, header))
    assert np.array_equal(labels, camera.label_image)
    info = conv.decode_camera_info(rclpy_conversions.camera_info_msg(camera, header))
    assert np.allclose(info.K, camera.intrinsics) and (info.width, info.height) == (camera.width, camera.height)
