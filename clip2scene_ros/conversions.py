"""rclpy messages from core values (clip2scene_core.messages does the packing; decoding is shared)."""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from clip2scene_core import messages as conv
from clip2scene_core.frame import Camera


def with_data(message_type, data: np.ndarray, **fields):
    """A message whose uint8[] `data` is set in one copy: with check_fields the setter keeps an
    array.array('B') as it is, where otherwise the constructor and the setter each copy it again."""
    values = array.array("B")
    values.frombytes(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    msg = message_type(check_fields=True, **fields)
    msg.data = values
    return msg


def header(stamp_ns: int, frame_id: str) -> Header:
    sec, nanosec = conv.ns_to_sec_nanosec(stamp_ns)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def cloud_msg(layout: conv.CloudLayout, msg_header: Header) -> PointCloud2:
    return with_data(PointCloud2, layout.data, header=msg_header, height=1, width=layout.width, is_bigendian=False,
                     fields=[PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in layout.fields],
                     point_step=layout.point_step, row_step=layout.point_step * layout.width, is_dense=True)


def image_msg(pixels: np.ndarray, msg_header: Header) -> Image:
    image = conv.encode_image(pixels)
    return with_data(Image, image.data, header=msg_header, height=image.height, width=image.width,
                     encoding=image.encoding, is_bigendian=0, step=image.step)


def compressed_msg(pixels: np.ndarray, msg_header: Header) -> CompressedImage:
    return with_data(CompressedImage, conv.encode_jpeg(pixels), header=msg_header, format="jpeg")


def camera_info_msg(camera: Camera, msg_header: Header) -> CameraInfo:
    values = conv.camera_info_values(camera.intrinsics, camera.distortion_model, camera.distortion, camera.width,
                                     camera.height)
    return CameraInfo(header=msg_header, height=values["height"], width=values["width"],
                      distortion_model=values["distortion_model"], d=values["d"].tolist(), k=values["k"].tolist(),
                      r=values["r"].tolist(), p=values["p"].tolist())
