"""Conversions between ROS 2 sensor messages and arrays, shared by the bag reader/writer and the nodes.

Decoding is duck-typed: it reads the standard field names, so it takes rclpy messages and the
`rosbags` message classes alike. Encoding returns plain values (field layouts, bytes, matrices) that
either side wraps into its own message classes. No ROS import here.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from dataclasses import dataclass

import numpy as np
import pointcloud2
from PIL import Image

from .frame import COEFFICIENTS

# sensor_msgs/PointField datatypes.
POINT_FIELD_TYPES = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.uint16, 5: np.int32, 6: np.uint32, 7: np.float32,
                     8: np.float64}
POINT_FIELD_CODES = {np.dtype(v): k for k, v in POINT_FIELD_TYPES.items()}

# Per-point fields that sensors name differently; the Frame uses the first name of each list.
FIELD_ALIASES = {
    "intensity": ("intensity", "reflectance", "i", "reflectivity"),
    "ring": ("ring", "channel", "laser_id", "line"),
    "time": ("time", "t", "timestamp", "time_offset"),
}


class MessageError(ValueError):
    """A message that cannot be decoded; the text names the message and what is wrong with it."""


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    return int(stamp_ns // 1_000_000_000), int(stamp_ns % 1_000_000_000)


def _buffer(data) -> np.ndarray:
    return data if isinstance(data, np.ndarray) else np.frombuffer(memoryview(data), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- clouds

@dataclass
class DecodedCloud:
    """A PointCloud2 as arrays: points (N, 3) float32 in the message's frame, finite only;
    fields by Frame name (intensity, ring, time in seconds relative to the stamp, ...);
    labels (N,) int64 when a label field was asked for and present; dropped: non-finite points removed."""

    points: np.ndarray
    fields: dict[str, np.ndarray]
    labels: np.ndarray | None
    stamp_ns: int
    frame_id: str
    dropped: int


def decode_cloud(msg, label_field: str | None = "label", what: str = "PointCloud2") -> DecodedCloud:
    """Decode a PointCloud2 (organised or not) into finite points and named fields."""
    names = [f.name for f in msg.fields]
    missing = [axis for axis in "xyz" if axis not in names]
    if missing:
        raise MessageError(f"{what}: no {'/'.join(missing)} field (fields are {names}); publish x, y, z as floats")
    _check_fields(msg, label_field, what)
    width, height = int(msg.width), int(msg.height)
    if width * height and msg.row_step < width * msg.point_step:
        raise MessageError(f"{what}: row_step {msg.row_step} is smaller than width {width} x point_step "
                           f"{msg.point_step}")
    data = _buffer(msg.data)
    if len(data) != msg.row_step * height:
        raise MessageError(f"{what}: {len(data)} data bytes, expected row_step x height = {msg.row_step * height} "
                           f"(truncated or padded message)")
    stamp_ns, frame_id = stamp_to_ns(msg.header.stamp), msg.header.frame_id
    if width * height == 0:
        return DecodedCloud(np.zeros((0, 3), np.float32), {}, None, stamp_ns, frame_id, 0)
    try:
        records = pointcloud2.read_points(_CloudView(msg, data))
    except ValueError as error:
        raise MessageError(f"{what}: {error}") from None
    # One pass per array where the cloud is all finite (the usual case): this runs on every message.
    xyz = np.empty((len(records), 3), np.float32)
    for column, axis in enumerate("xyz"):
        xyz[:, column] = records[axis]
    finite = np.isfinite(xyz).all(axis=1)
    dropped = int(len(xyz) - np.count_nonzero(finite))
    keep = finite if dropped else slice(None)
    fields = {}
    for name, aliases in FIELD_ALIASES.items():
        source = next((alias for alias in aliases if alias in names), None)
        if source is not None:
            fields[name] = _field_values(name, records[source][keep], stamp_ns)
    labels = None
    if label_field and label_field in names:
        labels = records[label_field][keep].astype(np.int64)
    return DecodedCloud(xyz[keep], fields, labels, stamp_ns, frame_id, dropped)


def _check_fields(msg, label_field: str | None, what: str) -> None:
    """Every field known, inside the point, apart from the others; the ones decoded hold one value each."""
    names = [f.name for f in msg.fields]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise MessageError(f"{what}: field {repeated[0]!r} appears {names.count(repeated[0])} times; each field "
                           f"name must be unique")
    read = {"x", "y", "z", label_field, *(alias for aliases in FIELD_ALIASES.values() for alias in aliases)}
    spans = []
    for field in msg.fields:
        if field.datatype not in POINT_FIELD_TYPES:
            raise MessageError(f"{what}: field {field.name!r} has unknown datatype {field.datatype}")
        if field.name in read and field.count > 1:
            raise MessageError(f"{what}: field {field.name!r} has count {field.count}; it must hold one value per "
                               f"point (count 1)")
        end = field.offset + np.dtype(POINT_FIELD_TYPES[field.datatype]).itemsize * max(field.count, 1)
        if end > msg.point_step:
            raise MessageError(f"{what}: field {field.name!r} ends at byte {end}, beyond point_step {msg.point_step}")
        spans.append((field.offset, end, field.name))
    spans.sort()
    for (_, end, name), (start, _, following) in itertools.pairwise(spans):
        if start < end:
            raise MessageError(f"{what}: field {following!r} starts at byte {start}, inside field {name!r} (which "
                               f"ends at {end}); the fields' offsets overlap")


class _CloudView:
    """The attributes pointcloud2.read_points reads, with data as a numpy buffer (rclpy gives array.array)."""

    def __init__(self, msg, data: np.ndarray):
        self.fields, self.point_step, self.row_step = msg.fields, msg.point_step, msg.row_step
        self.width, self.height, self.is_bigendian, self.is_dense = msg.width, msg.height, msg.is_bigendian, False
        self.data = data


def _field_values(name: str, values: np.ndarray, stamp_ns: int) -> np.ndarray:
    if name == "ring":
        return values.astype(np.uint16)
    if name == "time":
        # Drivers differ: relative float seconds (Velodyne), absolute float seconds (Hesai),
        # relative integer nanoseconds (Ouster's t), absolute integer nanoseconds.
        is_float = values.dtype.kind == "f"
        values = values.astype(np.float64)
        # One value tells relative from absolute (a sweep spans ~0.1 s; the tests below allow 10 s).
        middle = float(values[len(values) // 2]) if len(values) else 0.0
        if not np.isfinite(middle):
            middle = float(np.nanmedian(values))
        if is_float:
            if abs(middle - stamp_ns * 1e-9) < 10.0:
                values = values - stamp_ns * 1e-9
        elif abs(middle - stamp_ns) < 1e10:
            values = (values - stamp_ns) * 1e-9
        else:
            values = values * 1e-9
        return values.astype(np.float32)
    return values.astype(np.float32)


@dataclass
class CloudLayout:
    """What a PointCloud2 needs besides its header: fields as (name, offset, datatype, count),
    point_step, and the packed little-endian data bytes."""

    fields: list[tuple[str, int, int, int]]
    point_step: int
    data: np.ndarray
    width: int


def encode_cloud(points: np.ndarray, fields: dict[str, np.ndarray] | None = None,
                 labels: np.ndarray | None = None, label_field: str = "label",
                 extra: dict[str, np.ndarray] | None = None) -> CloudLayout:
    """Pack (N, 3) points, per-point fields and optional labels into one unorganised cloud.

    intensity/time are written as float32, ring as uint16, labels as uint32; extra arrays keep their dtype.
    """
    columns: list[tuple[str, np.ndarray]] = [(axis, points[:, i].astype(np.float32)) for i, axis in enumerate("xyz")]
    wanted = {"intensity": np.float32, "ring": np.uint16, "time": np.float32}
    for name, values in (fields or {}).items():
        columns.append((name, np.asarray(values).astype(wanted.get(name, np.asarray(values).dtype))))
    if labels is not None:
        columns.append((label_field, np.asarray(labels).astype(np.uint32)))
    return _pack(columns + [(name, np.asarray(values)) for name, values in (extra or {}).items()], len(points))


def input_records(msg) -> np.ndarray:
    """The finite points of a PointCloud2 (those decode_cloud keeps, in its order) as a structured array of every
    single-valued field the message has, named and typed as in the message."""
    records = pointcloud2.read_points(_CloudView(msg, _buffer(msg.data)))
    finite = np.isfinite(records["x"]) & np.isfinite(records["y"]) & np.isfinite(records["z"])
    return records if finite.all() else records[finite]


def encode_beside_input(records: np.ndarray, extra: dict[str, np.ndarray]) -> CloudLayout:
    """An unorganised cloud of the input's fields (input_records; multi-valued fields left out) with the extra
    arrays after them; an input field of an extra's name gives way to the extra."""
    columns = [(name, records[name]) for name in records.dtype.names
               if records.dtype[name].shape == () and name not in extra]
    return _pack(columns + [(name, np.asarray(values)) for name, values in extra.items()], len(records))


def _pack(columns: list[tuple[str, np.ndarray]], count: int) -> CloudLayout:
    dtype = np.dtype([(name, values.dtype.newbyteorder("<")) for name, values in columns])
    packed = np.empty(count, dtype=dtype)
    for name, values in columns:
        packed[name] = values
    layout = [(name, dtype.fields[name][1], POINT_FIELD_CODES[np.dtype(dtype.fields[name][0].type)], 1)
              for name, _ in columns]
    return CloudLayout(layout, dtype.itemsize, packed.view(np.uint8).reshape(-1), count)


# ---------------------------------------------------------------------------------------------- images

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "8UC3": 3, "8UC4": 4,
             "mono16": 1, "16UC1": 1, "32SC1": 1, "32FC1": 1, "16SC1": 1}
_DEPTH = {"mono16": np.uint16, "16UC1": np.uint16, "16SC1": np.int16, "32SC1": np.int32, "32FC1": np.float32}
BAYER_PATTERNS = ("bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8")
MAX_IMAGE_PIXELS = 50_000_000  # 8K is 33 Mpx; PIL's own bomb check allows 89 Mpx with a warning


def _image_array(msg, what: str) -> np.ndarray:
    """The raw (H, W[, C]) array of a sensor_msgs/Image, honouring step and endianness."""
    encoding = msg.encoding
    if encoding in BAYER_PATTERNS:
        channels, dtype = 1, np.dtype(np.uint8)
    elif encoding in _CHANNELS:
        channels, dtype = _CHANNELS[encoding], np.dtype(_DEPTH.get(encoding, np.uint8))
    else:
        raise MessageError(f"{what}: unsupported image encoding {encoding!r}; use one of "
                           f"{sorted(_CHANNELS) + list(BAYER_PATTERNS)} or a CompressedImage (jpeg/png)")
    height, width = int(msg.height), int(msg.width)
    _check_size(width, height, what)
    row_bytes = width * channels * dtype.itemsize
    if msg.step < row_bytes:
        raise MessageError(f"{what}: step {msg.step} is smaller than width x pixel size = {row_bytes}")
    data = _buffer(msg.data)
    if len(data) < msg.step * height:
        raise MessageError(f"{what}: {len(data)} data bytes, expected step x height = {msg.step * height}")
    rows = data[: msg.step * height].reshape(height, msg.step)[:, :row_bytes]
    dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    array = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    return array.astype(dtype.newbyteorder("="))


def _demosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Bayer (H, W) uint8 -> (H, W, 3) RGB: each 2x2 cell's R, mean G and B, repeated over the cell."""
    height, width = raw.shape[0] // 2 * 2, raw.shape[1] // 2 * 2
    cells = raw[:height, :width].reshape(height // 2, 2, width // 2, 2).astype(np.uint16)
    layout = pattern.removeprefix("bayer_").removesuffix("8")  # e.g. "rggb": top-left, top-right, bottom-left, ...
    at = {(0, 0): layout[0], (0, 1): layout[1], (1, 0): layout[2], (1, 1): layout[3]}
    channel = {c: [cells[:, r, :, q] for (r, q), name in at.items() if name == c] for c in "rgb"}
    rgb = np.stack([channel["r"][0], (channel["g"][0] + channel["g"][1]) // 2, channel["b"][0]], axis=-1)
    full = rgb.repeat(2, axis=0).repeat(2, axis=1).astype(np.uint8)
    out = np.zeros(raw.shape + (3,), np.uint8)
    out[:height, :width] = full
    return out


def _check_size(width: int, height: int, what: str) -> None:
    if width <= 0 or height <= 0 or width * height > MAX_IMAGE_PIXELS:
        raise MessageError(f"{what}: {width}x{height} pixels is outside 1..{MAX_IMAGE_PIXELS} pixels "
                           f"(the largest camera image decoded); skipped before decoding")


def decode_image(msg, what: str = "Image") -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> (H, W, 3) uint8 RGB. Sizes are checked against
    MAX_IMAGE_PIXELS before anything is decoded (a PNG's header can claim any size)."""
    if hasattr(msg, "format"):  # CompressedImage
        try:
            with Image.open(io.BytesIO(_buffer(msg.data).tobytes())) as image:
                _check_size(*image.size, what)
                return np.asarray(image.convert("RGB"))
        except MessageError:
            raise
        except Exception as error:  # noqa: BLE001 - a codec fed arbitrary bytes can raise anything
            raise MessageError(f"{what}: cannot decode compressed image (format {msg.format!r}): "
                               f"{type(error).__name__}: {error}") from None
    array = _image_array(msg, what)
    encoding = msg.encoding
    if encoding in BAYER_PATTERNS:
        return _demosaic(array[:, :, 0], encoding)
    if array.dtype != np.uint8:  # mono16 and other deep greys: scale to 8 bits for display and CLIP
        grey = array[:, :, 0].astype(np.float64)
        high = np.percentile(grey, 99.5) if grey.size else 1.0
        array = (np.clip(grey / max(high, 1e-9), 0, 1) * 255).astype(np.uint8)[:, :, None]
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if encoding.startswith("bgr"):
        array = array[:, :, 2::-1]
    return np.ascontiguousarray(array[:, :, :3])


# The per-pixel integer images beside each camera's camera_info (lossless sensor_msgs/Image, the image's header), by
# the Camera attribute each is read into, with its default topic name (<camera namespace>/<name>): class ids, and the
# synthetic world's persistent surface ids (the cliplike teacher's). Both decode with decode_label_image.
PIXEL_IMAGES = {"label_image": "labels", "instance_image": "instances"}


def decode_label_image(msg, what: str = "label Image") -> np.ndarray:
    """A per-pixel class-id image (mono8/mono16/16UC1/32SC1...) -> (H, W) int64."""
    if hasattr(msg, "format"):
        raise MessageError(f"{what}: label images must be lossless sensor_msgs/Image (mono8, mono16 or 32SC1), "
                           f"not a CompressedImage")
    array = _image_array(msg, what)
    if array.shape[2] != 1:
        raise MessageError(f"{what}: label images need one channel, encoding {msg.encoding!r} has {array.shape[2]}")
    return array[:, :, 0].astype(np.int64)


@dataclass
class ImageLayout:
    encoding: str
    height: int
    width: int
    step: int
    data: np.ndarray


def encode_image(image: np.ndarray) -> ImageLayout:
    """(H, W, 3) uint8 RGB -> rgb8; (H, W) integer label ids -> 32SC1 (or mono16 when they fit)."""
    if image.ndim == 3:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        return ImageLayout("rgb8", image.shape[0], image.shape[1], image.shape[1] * 3, image.reshape(-1))
    if image.min(initial=0) >= 0 and image.max(initial=0) < 65536:
        array = np.ascontiguousarray(image, dtype="<u2")
        return ImageLayout("mono16", image.shape[0], image.shape[1], image.shape[1] * 2, array.view(np.uint8).ravel())
    array = np.ascontiguousarray(image, dtype="<i4")
    return ImageLayout("32SC1", image.shape[0], image.shape[1], image.shape[1] * 4, array.view(np.uint8).ravel())


def encode_jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- calibration

@dataclass
class Intrinsics:
    """From a sensor_msgs/CameraInfo: K (3, 3), distortion model and coefficients, image size; offset (3,) a
    translation in the camera frame that a rectified stereo camera's P adds (its baseline), else zeros."""

    K: np.ndarray
    distortion_model: str
    distortion: np.ndarray
    width: int
    height: int
    offset: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))


def is_rectified(image_topic: str) -> bool:
    """Whether an image topic carries rectified images, by the image_proc convention (image_rect,
    image_rect_color, and their transports below them): those use the CameraInfo's P and no distortion."""
    return any(part.startswith("image_rect") for part in image_topic.strip("/").split("/"))


def decode_camera_info(msg, what: str = "CameraInfo", rectified: bool = False) -> Intrinsics:
    """The camera model of an unrectified image (K and D; plumb_bob, rational_polynomial or equidistant) or,
    with rectified, of a rectified one (P's left 3x3 and no distortion, as image_geometry does)."""
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0 or width * height > MAX_IMAGE_PIXELS:
        raise MessageError(f"{what}: image size {width}x{height} is empty or beyond {MAX_IMAGE_PIXELS} pixels")
    if rectified:
        P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
        K = P[:, :3]
        if not np.all(np.isfinite(P)) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] == 0:
            raise MessageError(f"{what}: P {P.ravel().tolist()} has no valid focal length, but the image topic is "
                               f"rectified (image_rect*); calibrate the camera or subscribe to image_raw")
        offset = np.linalg.solve(K, P[:, 3])  # P = K [I | t]
        return Intrinsics(K / K[2, 2], "none", np.zeros(5), width, height, offset)
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] == 0:
        raise MessageError(f"{what}: K {K.ravel().tolist()} has no valid focal length; calibrate the camera "
                           f"(or fix the driver's camera_info_url)")
    D = np.asarray(msg.d, dtype=np.float64).ravel()
    if not np.all(np.isfinite(D)):
        raise MessageError(f"{what}: distortion {D.tolist()} holds NaN or inf; recalibrate the camera")
    model = msg.distortion_model or "none"
    if not np.any(D):
        model, D = "none", np.zeros(5)
    elif model not in COEFFICIENTS or model == "none":
        raise MessageError(f"{what}: distortion model {model!r} is not supported (plumb_bob, rational_polynomial, "
                           f"equidistant or none); publish rectified images (image_rect) instead")
    elif np.any(D[COEFFICIENTS[model]:]):
        raise MessageError(f"{what}: {D.size} distortion coefficients, but {model} has {COEFFICIENTS[model]}; "
                           f"check the driver's distortion_model")
    return Intrinsics(K / K[2, 2], model, D[:COEFFICIENTS[model]], width, height)


def camera_info_values(K: np.ndarray, distortion_model: str, distortion: np.ndarray, width: int,
                       height: int) -> dict:
    """The CameraInfo fields (besides header and binning/roi) for a pinhole camera with a distortion model."""
    P = np.zeros((3, 4))
    P[:, :3] = K
    model = "" if distortion_model == "none" else distortion_model
    return dict(height=int(height), width=int(width), distortion_model=model,
                d=np.asarray(distortion if model else [], dtype=np.float64),
                k=np.asarray(K, dtype=np.float64).ravel(), r=np.eye(3).ravel(), p=P.ravel())


def transform_to_matrix(translation, rotation) -> np.ndarray:
    """geometry_msgs Vector3 + Quaternion (x, y, z, w) -> (4, 4)."""
    x, y, z, w = rotation.x, rotation.y, rotation.z, rotation.w
    norm = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(norm) or norm < 1e-9:
        raise MessageError(f"transform has an invalid rotation quaternion ({x}, {y}, {z}, {w})")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    T = np.eye(4)
    T[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                 [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                 [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    T[:3, 3] = [translation.x, translation.y, translation.z]
    if not np.all(np.isfinite(T[:3, 3])):
        raise MessageError(f"transform has a NaN or infinite translation {T[:3, 3].tolist()}")
    return T


def matrix_to_quaternion(T: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation part of a (4, 4) or (3, 3) matrix -> quaternion (x, y, z, w), w >= 0."""
    R = np.asarray(T)[:3, :3]
    # Shepperd's method: pivot on the largest of the four squared components for stability.
    trace = np.trace(R)
    candidates = [trace, R[0, 0], R[1, 1], R[2, 2]]
    k = int(np.argmax(candidates))
    if k == 0:
        s = 2 * np.sqrt(1 + trace)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    elif k == 1:
        s = 2 * np.sqrt(1 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif k == 2:
        s = 2 * np.sqrt(1 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2 * np.sqrt(1 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    return tuple(float(v) for v in (q if q[3] >= 0 else -q))
