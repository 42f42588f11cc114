"""rclpy messages from core values (clip2scene_core.messages does the packing; decoding is shared)."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from clip2scene_core import messages as conv
from clip2scene_core.frame import Camera


def header(stamp_ns: int, frame_id: str) -> Header:
    sec, nanosec = conv.ns_to_sec_nanosec(stamp_ns)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def cloud_msg(layout: conv.CloudLayout, msg_header: Header) -> PointCloud2:
    return PointCloud2(header=msg_header, height=1, width=layout.width,
                       fields=[PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in layout.fields],
                       is_bigendian=False, point_step=layout.point_step, row_step=layout.point_step * layout.width,
                       data=layout.data.tobytes(), is_dense=True)


def image_msg(array: np.ndarray, msg_header: Header) -> Image:
    image = conv.encode_image(array)
    return Image(header=msg_header, height=image.height, width=image.width, encoding=image.encoding,
                 is_bigendian=0, step=image.step, data=image.data.tobytes())


def compressed_msg(array: np.ndarray, msg_header: Header) -> CompressedImage:
    return CompressedImage(header=msg_header, format="jpeg", data=conv.encode_jpeg(array).tobytes())


def camera_info_msg(camera: Camera, msg_header: Header) -> CameraInfo:
    values = conv.camera_info_values(camera.intrinsics, camera.distortion_model, camera.distortion, camera.width,
                                     camera.height)
    return CameraInfo(header=msg_header, height=values["height"], width=values["width"],
                      distortion_model=values["distortion_model"], d=values["d"].tolist(), k=values["k"].tolist(),
                      r=values["r"].tolist(), p=values["p"].tolist())
