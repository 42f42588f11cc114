"""The embedded default data source: a procedural street driven through by a sensor-carrying car.

`SyntheticWorld` builds a street from its seed once (road, buildings, trees, parked and moving
traffic, pedestrians, a construction zone) and renders frame i as a pure function of that world
and the time i * 0.1 s, so `source[i]` never depends on what was read before it.

The world
- A two-lanes-each-way road whose centreline is a chain of gentle circular arcs (radius 220-500 m,
  alternating left and right), so the ego yaw turns along a drive. `s` is arc length along the
  centreline, `d` the signed lateral offset (left positive). The ground is the plane z = 0 of the
  world; its class is a function of |d|: median (flat.other), carriageway (flat.driveable_surface),
  sidewalk (flat.sidewalk), verge and plots (flat.terrain).
- Everything else is built from oriented boxes, vertical cylinders and ellipsoids, each carrying a
  raw nuScenes lidarseg label (`NUSCENES_CATEGORIES`), a colour and a LiDAR reflectivity.
- The ego drives the right inner lane at 8 m/s. The right outer lane is a parking lane; the left
  lanes carry oncoming traffic and cyclists; pedestrians walk the sidewalks (`moving=False`
  freezes all of them).

Sensors (nuScenes-like)
- LiDAR: 32 beams (ring 0 lowest) from -30.67 to +10.67 degrees, 1080 azimuth steps, 70 m range,
  mounted 1.84 m up and 0.94 m forward of the ego origin without rotation (LiDAR frame x forward,
  y left, z up). It spins clockwise seen from above and crosses straight ahead at the sweep stamp;
  the `time` field (s, relative to the stamp, in [-0.05, 0.05)) follows the azimuth. The whole sweep
  is ray-cast against the world as it is at the stamp (no rolling shutter, so no deskew is needed
  or wanted). Rays are exact lines; ranges get 1.5 cm of seeded Gaussian noise.
- Cameras: up to six, mounted like nuScenes' (`CAMERA_MOUNTS`), level, pinhole (70 degrees
  horizontal field of view, the back camera 90), optionally plumb_bob distortion; every pixel's
  centre ray is cast (undistorted first when distortion is on), so `label_image` is the exact
  label seen through each pixel centre and `geometry.project` lands LiDAR points on their own
  surfaces. Images are shaded with a sun (Lambertian), a sky gradient and distance haze.
  Camera stamps equal the sweep stamp; `lidar_to_camera` is exact.
- The ego body itself is not modelled (no vehicle.ego points).

  With `depth=True` cameras also carry z-depth images, so that `geometry.project` drops points a
  camera cannot see (off by default: a real car has no such images, and its pairing keeps the
  parallax errors of a LiDAR mounted above and behind its cameras).

Speed: ray-primitive tests run in numpy on (ray, primitive) pairs that survive a cone test between
tiles of neighbouring rays and each primitive's bounding sphere (boxes also a slab test of the
tile's axis against the box grown by the cone's width). About 0.5 s per frame with six 400x224
cameras on one CPU core, 0.03 s without cameras; consecutive frames share their sweeps' renders.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..frame import Camera, Frame
from ..geometry import invert
from ..hashing import mix
from .source import FrameSource, SourceError
from .synthetic_objects import (
    DRIVEABLE,
    GLASS,
    NUSCENES_CATEGORIES,
    ONCOMING_SPEED_MPS,
    OTHER_FLAT,
    SIDEWALK,
    TERRAIN,
    TICK_OFFSET,
    WINDOWS,
    Layout,
    ObjectTruth,
    World,
    build_world,
    object_truth,
)
from .synthetic_raycast import BOX, CYLINDER, ELLIPSOID, MISS, Rays, Scene, cast, make_rays

SWEEP_PERIOD_NS = 100_000_000
FIRST_STAMP_NS = 1_700_000_000 * 10**9
EGO_SPEED_MPS = 8.0
SUN_ELEVATION_RAD = math.radians(50.0)
LIDAR_TO_EGO_M = (0.943, 0.0, 1.84)
LIDAR_FOV_DEG = (-30.67, 10.67)
LIDAR_AZIMUTH_STEPS = 1080
LIDAR_RANGE_M = 70.0
LIDAR_RANGE_NOISE_M = 0.015
CAMERA_RANGE_M = 250.0
# name, yaw in the ego frame (deg), position in the ego frame (m), horizontal field of view (deg);
# poses rounded from nuScenes' calibration.
CAMERA_MOUNTS = (
    ("CAM_FRONT", 0.0, (1.70, 0.02, 1.51), 70.0),
    ("CAM_FRONT_RIGHT", -55.0, (1.55, -0.49, 1.50), 70.0),
    ("CAM_FRONT_LEFT", 55.0, (1.52, 0.49, 1.51), 70.0),
    ("CAM_BACK", 180.0, (0.03, 0.0, 1.58), 90.0),
    ("CAM_BACK_LEFT", 110.0, (1.04, 0.48, 1.59), 70.0),
    ("CAM_BACK_RIGHT", -110.0, (1.01, -0.48, 1.56), 70.0),
)
# k1 k2 p1 p2 k3: mild barrel distortion, as a small automotive lens has.
PLUMB_BOB = (-0.10, 0.02, 0.0006, -0.0004, 0.0)

MAX_FRAMES = 20_000

GROUND_COLOR = {DRIVEABLE: (0.33, 0.33, 0.35), OTHER_FLAT: (0.60, 0.56, 0.50), SIDEWALK: (0.70, 0.68, 0.65),
                TERRAIN: (0.36, 0.48, 0.22)}
GROUND_REFLECTIVITY = {DRIVEABLE: 0.07, OTHER_FLAT: 0.15, SIDEWALK: 0.18, TERRAIN: 0.12}
MARKING_COLOR = np.array([[0, 0, 0], [0.92, 0.92, 0.90], [0.92, 0.76, 0.22]], dtype=np.float32)
GROUND_CELL_M = 8.0  # ground is one surface per square of this edge in Camera.instance_image
MARKING_REFLECTIVITY = 0.5  # retroreflective paint shows in LiDAR intensity as it does in the image
SKY_HORIZON = np.array([0.80, 0.86, 0.92], dtype=np.float32)
SKY_ZENITH = np.array([0.33, 0.53, 0.84], dtype=np.float32)


class SyntheticWorld(FrameSource):
    """A procedural street scene with a ray-cast LiDAR and rendered cameras (see the module docstring).

    frames: number of frames (1-20000), 0.1 s apart; the world grows with the drive.
    seed: world layout (non-negative); the same seed gives bit-identical frames.
    cameras: how many of CAMERA_MOUNTS, in that order (0-6).
    sweeps: previous sweeps attached to each frame as Frame.sweeps, newest first (0-10); each is a
        full Frame (pose, cameras, labels) at t - k * 0.1 s.
    moving: whether traffic, cyclists and pedestrians move.
    width, height: camera image size in pixels (16-4096).
    beams: LiDAR beams spread over the 32-beam sensor's vertical field of view (1-128).
    distortion: plumb_bob cameras (mild barrel distortion), rendered through the same model.
    depth: attach Camera.depth (metres along the optical axis, 0 for sky). Off by default, as on a
        real car: with it, geometry.project drops the points a camera cannot see, which the real
        pairing cannot do (the LiDAR sits 1.84 m up and sees over cars the cameras see the side of).

    Frame i: stamp FIRST_STAMP_NS + i * 100 ms, name "synthetic-{seed}/{i:06d}", points (N, 3)
    float32 in the LiDAR frame, fields intensity (float32, 0-255), ring (uint16), time (float32 s),
    labels (N,) raw nuScenes lidarseg ids, ego_pose ego -> world, cameras with label_image.
    """

    kind = "synthetic"
    label_names = NUSCENES_CATEGORIES

    def __init__(self, frames: int = 40, seed: int = 0, cameras: int = 6, sweeps: int = 0, moving: bool = True,
                 width: int = 400, height: int = 224, beams: int = 32, distortion: bool = False,
                 depth: bool = False):
        _check_int("frames", frames, 1, MAX_FRAMES)
        _check_int("seed", seed, 0, 2**63 - 1)
        _check_int("cameras", cameras, 0, len(CAMERA_MOUNTS))
        _check_int("sweeps", sweeps, 0, 10)
        _check_int("width", width, 16, 4096)
        _check_int("height", height, 16, 4096)
        _check_int("beams", beams, 1, 128)
        for name, value in (("moving", moving), ("distortion", distortion), ("depth", depth)):
            if not isinstance(value, (bool, np.bool_)):
                raise SourceError(f"synthetic source: option {name}={value!r} must be true or false")
        self.frames, self.seed, self.sweeps = frames, seed, sweeps
        self.moving, self.distortion, self.depth = bool(moving), bool(distortion), bool(depth)
        # The world must hold everything any sensor can see at any rendered time, including objects
        # that drive towards the ego while it drives towards them.
        duration_s = frames * SWEEP_PERIOD_NS * 1e-9
        s_min = -CAMERA_RANGE_M - 50.0 - EGO_SPEED_MPS * 0.1 * sweeps
        s_max = (EGO_SPEED_MPS + ONCOMING_SPEED_MPS) * duration_s + CAMERA_RANGE_M + 50.0
        layout_rng = np.random.default_rng([seed, 0])
        self._layout = Layout.generate(layout_rng)
        self._sun_azimuth = float(layout_rng.uniform(-math.pi, math.pi))
        self._road = _Road.generate(seed, s_min - 500.0, s_max + 500.0)
        self._world = build_world(seed, self._layout, s_min, s_max, self.moving)
        self._lidar = _lidar_rays(beams)
        self._cameras = [_camera_rig(i, width, height, self.distortion, seed) for i in range(cameras)]
        # tick -> (frame, scene, primitive of each point): the last two give the objects' truth on demand.
        self._cache: OrderedDict[int, tuple[Frame, Scene, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, index: int) -> Frame:
        index = self._check_index(index)
        # Oldest first: with the least recently used render evicted, reading frames in order then
        # renders each time step once.
        sweeps = [self._frame(index - k) for k in range(self.sweeps, 0, -1)]
        frame = self._frame(index)
        frame.sweeps = sweeps[::-1]
        return frame

    def _frame(self, tick: int) -> Frame:
        """Frame at time tick * 0.1 s without sweeps; a copy, so callers may modify it freely.

        Consecutive frames share sweeps, so the last few renders are kept.
        """
        if tick in self._cache:
            self._cache.move_to_end(tick)
        else:
            self._cache[tick] = self._render(tick)
            while len(self._cache) > self.sweeps + 1:
                self._cache.popitem(last=False)
        return _copy_frame(self._cache[tick][0])

    def objects(self, index: int) -> ObjectTruth:
        """The ground truth of frame index's objects: an instance id per point and each instance's box, in the
        LiDAR frame (see ObjectTruth)."""
        index = self._check_index(index)
        self._frame(index)
        _, scene, prim = self._cache[index]
        return object_truth(self._world, scene, prim, np.array(LIDAR_TO_EGO_M))

    # -- rendering ------------------------------------------------------------------------------

    def ego_pose_at(self, time_s: float) -> np.ndarray:
        """(4, 4) ego -> world at time_s (frame i is at i * 0.1 s)."""
        x, y, heading, _ = self._ego_state(time_s)
        pose = np.eye(4)
        pose[:2, :2] = [[math.cos(heading), -math.sin(heading)], [math.sin(heading), math.cos(heading)]]
        pose[:2, 3] = x, y
        return pose

    def _ego_state(self, time_s: float) -> tuple[float, float, float, float]:
        s = EGO_SPEED_MPS * time_s
        x, y, heading = self._road.pose(np.array([s]), np.array([self._layout.ego_lane]))
        return float(x[0]), float(y[0]), float(heading[0]), s

    def _render(self, tick: int) -> tuple[Frame, Scene, np.ndarray]:
        time_s = tick * SWEEP_PERIOD_NS * 1e-9
        stamp_ns = FIRST_STAMP_NS + tick * SWEEP_PERIOD_NS
        ego = self._ego_state(time_s)
        scene = _place(self._world, self._road, time_s, ego, CAMERA_RANGE_M if self._cameras else LIDAR_RANGE_M)
        rng = np.random.default_rng([self.seed, 5, tick + TICK_OFFSET])
        points, labels, fields, prim = self._sweep(scene, ego, rng)
        lidar_to_ego = np.eye(4)
        lidar_to_ego[:3, 3] = LIDAR_TO_EGO_M
        cameras = [self._photograph(rig, scene, ego, stamp_ns) for rig in self._cameras]
        frame = Frame(points=points, stamp_ns=stamp_ns, fields=fields, lidar_to_ego=lidar_to_ego,
                      ego_pose=self.ego_pose_at(time_s), cameras=cameras, labels=labels,
                      name=f"synthetic-{self.seed}/{tick:06d}")
        return frame, scene, prim

    def _sweep(self, scene: Scene, ego, rng) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """points (N, 3) float32 LiDAR frame, raw labels (N,), fields, and the scene primitive (or GROUND) each
        point lies on."""
        rays = self._lidar
        hits = cast(rays, scene)
        hit = np.flatnonzero(np.isfinite(hits.t))
        t, prim, dirs = hits.t[hit], hits.prim[hit], rays.dirs[hit]
        labels, reflectivity, _ = self._surface(scene, ego, rays.origin + t[:, None] * dirs, prim, hits.tex[hit])
        incidence = np.abs(np.einsum("ij,ij->i", hits.normal[hit], dirs))
        gain = np.exp(rng.normal(0.0, 0.15, len(hit)))
        intensity = np.clip(255.0 * reflectivity * (0.2 + 0.8 * incidence) * gain, 0, 255).astype(np.float32)
        distance = t + rng.normal(0.0, LIDAR_RANGE_NOISE_M, len(hit)).astype(np.float32)
        points = dirs * distance[:, None]
        fields = {"intensity": intensity, "ring": rays.ring[hit], "time": rays.time[hit]}
        return points.astype(np.float32), labels, fields, prim

    def _photograph(self, rig: _CameraRig, scene: Scene, ego, stamp_ns: int) -> Camera:
        rays = rig.rays
        hits = cast(rays, scene)
        n = len(rays.dirs)
        label = np.zeros(n, np.int64)
        color = np.empty((n, 3), np.float32)
        miss = hits.prim == MISS
        elevation = np.clip(rays.dirs[miss, 2], 0, 1) ** 0.6
        color[miss] = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * elevation[:, None]
        hit = np.flatnonzero(~miss)
        t = hits.t[hit]
        surface = rays.origin + t[:, None] * rays.dirs[hit]
        label[hit], _, base = self._surface(scene, ego, surface, hits.prim[hit], hits.tex[hit])
        instance = np.zeros(n, np.int64)
        instance[hit] = self._surface_ids(scene, ego, surface, hits.prim[hit], label[hit])
        heading = ego[2]
        flat = math.cos(SUN_ELEVATION_RAD)
        sun = np.array([math.cos(self._sun_azimuth - heading) * flat, math.sin(self._sun_azimuth - heading) * flat,
                        math.sin(SUN_ELEVATION_RAD)], dtype=np.float32)
        lambert = np.maximum(hits.normal[hit] @ sun, 0.0)
        shaded = base * (0.5 + 0.55 * lambert + 0.08 * hits.normal[hit, 2])[:, None]
        haze = (1.0 - np.exp(-t / 400.0))[:, None]
        color[hit] = shaded * (1 - haze) + SKY_HORIZON * haze
        image = (np.clip(color, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(rig.height, rig.width, 3)
        depth = None
        if self.depth:
            depth = np.zeros(n, np.float32)
            depth[hit] = t * (rays.dirs[hit] @ rig.optical_axis)
            depth = depth.reshape(rig.height, rig.width)
        return Camera(name=rig.name, image=image, intrinsics=rig.intrinsics, lidar_to_camera=rig.lidar_to_camera,
                      stamp_ns=stamp_ns, distortion_model="plumb_bob" if self.distortion else "none",
                      distortion=rig.distortion, label_image=label.reshape(rig.height, rig.width),
                      instance_image=instance.reshape(rig.height, rig.width), depth=depth, frame_id=rig.name.lower())

    def _surface_ids(self, scene: Scene, ego, points: np.ndarray, prim: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Camera.instance_image values of surfaces at points (M, 3), ego frame, on prim (M,): one id per (world
        object, label) and per GROUND_CELL_M square of ground and its label, mixed with the world's seed so another
        drive has other ids; positive int31."""
        on_object = prim >= 0
        x, y = _world_xy(ego, points)
        cells = np.floor(np.stack([x, y]) / GROUND_CELL_M).astype(np.int64)
        objects = self._world.prim_obj[scene.source[np.where(on_object, prim, 0)]]
        parts = np.where(on_object, [objects, np.zeros_like(objects)], cells)
        return mix(self.seed, on_object, labels, parts[0], parts[1])

    def _surface(self, scene: Scene, ego, points: np.ndarray, prim: np.ndarray, tex: np.ndarray):
        """What rays hit at points (M, 3), ego frame, on prim (M,) (a scene primitive or GROUND):
        label (M,) int64, LiDAR reflectivity (M,) float32, colour (M, 3) float32 0-1 before shading."""
        labels = np.empty(len(prim), np.int64)
        reflectivity = np.empty(len(prim), np.float32)
        color = np.empty((len(prim), 3), np.float32)
        on_object = prim >= 0
        p = prim[on_object]
        labels[on_object] = scene.label[p]
        reflectivity[on_object] = scene.reflect[p]
        color[on_object] = scene.color[p]
        glazed = np.flatnonzero(on_object)[scene.material[p] == WINDOWS]
        if glazed.size:
            color[glazed] = _windows(color[glazed], tex[glazed])
        ground = ~on_object
        if ground.any():
            gx, gy = _world_xy(ego, points[ground])
            along, lateral = self._road.locate(gx, gy, ego[3])
            g_label, marking = self._layout.ground(along, lateral)
            labels[ground] = g_label
            g_reflect = np.select([g_label == k for k in GROUND_REFLECTIVITY], list(GROUND_REFLECTIVITY.values()))
            reflectivity[ground] = np.where(marking > 0, MARKING_REFLECTIVITY, g_reflect)
            g_color = np.select([(g_label == k)[:, None] for k in GROUND_COLOR],
                                [np.array(v, np.float32) for v in GROUND_COLOR.values()])
            g_color = g_color * _ground_texture(gx, gy, along, g_label)[:, None]
            color[ground] = np.where((marking > 0)[:, None], MARKING_COLOR[marking], g_color)
        return labels, reflectivity, color


def _world_xy(ego, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World x, y of ego-frame points (M, 3) at the ego state (x, y, heading, s)."""
    x, y, heading, _ = ego
    c, s = math.cos(heading), math.sin(heading)
    return x + c * points[:, 0] - s * points[:, 1], y + s * points[:, 0] + c * points[:, 1]


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SourceError(f"synthetic source: option {name}={value!r} must be an integer from {low} to {high}")
    if not low <= value <= high:
        raise SourceError(f"synthetic source: option {name}={value} is out of range; it must be from {low} to {high}")


def _copy_frame(frame: Frame) -> Frame:
    cameras = [Camera(name=c.name, image=c.image.copy(), intrinsics=c.intrinsics.copy(),
                      lidar_to_camera=c.lidar_to_camera.copy(), stamp_ns=c.stamp_ns,
                      distortion_model=c.distortion_model, distortion=c.distortion.copy(),
                      label_image=c.label_image.copy(), instance_image=c.instance_image.copy(),
                      depth=None if c.depth is None else c.depth.copy(),
                      frame_id=c.frame_id) for c in frame.cameras]
    return Frame(points=frame.points.copy(), stamp_ns=frame.stamp_ns,
                 fields={k: v.copy() for k, v in frame.fields.items()}, lidar_to_ego=frame.lidar_to_ego.copy(),
                 ego_pose=frame.ego_pose.copy(), cameras=cameras, labels=frame.labels.copy(), name=frame.name,
                 frame_id=frame.frame_id)


# -- the road --------------------------------------------------------------------------------------




def _advance(x, y, heading, curvature, u):
    """Pose after driving u metres along an arc of the given curvature (1/m, non-zero)."""
    end = heading + curvature * u
    return (x + (np.sin(end) - np.sin(heading)) / curvature, y - (np.cos(end) - np.cos(heading)) / curvature, end)


def _wrap(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


@dataclass
class _Road:
    """Centreline as a chain of circular arcs; world frame; s = 0 is at the origin heading +x."""

    starts: np.ndarray  # (A,) s where each arc begins, increasing
    x: np.ndarray  # (A,) start poses
    y: np.ndarray
    heading: np.ndarray
    curvature: np.ndarray  # (A,) 1/m, never 0; alternating sign

    @classmethod
    def generate(cls, seed: int, s_min: float, s_max: float) -> _Road:
        # Arcs are drawn outward from the one containing s = 0, each direction from its own stream,
        # so a longer drive extends the same road rather than drawing a different one.
        # The first arc spans at least [-60, 100] m, so the default 40-frame drive turns one way.
        first = np.random.default_rng([seed, 1])
        sign = 1.0 if first.random() < 0.5 else -1.0
        arcs = {0: (-60.0 - first.uniform(0, 40), sign / first.uniform(220, 500))}
        forward, backward = np.random.default_rng([seed, 2]), np.random.default_rng([seed, 3])
        k, start = 0, first.uniform(100, 180)
        while start < s_max:
            k += 1
            arcs[k] = (start, (-1) ** k * sign / forward.uniform(220, 500))
            start += forward.uniform(150, 300)
        k, start = 0, arcs[0][0]
        while start > s_min:
            start -= backward.uniform(150, 300)
            k -= 1
            arcs[k] = (start, (-1) ** k * sign / backward.uniform(220, 500))
        order = sorted(arcs)
        starts = np.array([arcs[k][0] for k in order])
        curvature = np.array([arcs[k][1] for k in order])
        x, y, heading = (np.zeros(len(order)) for _ in range(3))
        zero = order.index(0)
        x[zero], y[zero], heading[zero] = _advance(0.0, 0.0, 0.0, curvature[zero], starts[zero])
        for i in range(zero + 1, len(order)):
            x[i], y[i], heading[i] = _advance(x[i - 1], y[i - 1], heading[i - 1], curvature[i - 1],
                                              starts[i] - starts[i - 1])
        for i in range(zero - 1, -1, -1):
            # Walk back from the next arc's start along this arc.
            x[i], y[i], heading[i] = _advance(x[i + 1], y[i + 1], heading[i + 1], curvature[i],
                                              starts[i] - starts[i + 1])
        return cls(starts, x, y, heading, curvature)

    def pose(self, s: np.ndarray, d: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y and road heading at arc length s (M,) and lateral offset d."""
        k = np.clip(np.searchsorted(self.starts, s, side="right") - 1, 0, len(self.starts) - 1)
        x, y, heading = _advance(self.x[k], self.y[k], self.heading[k], self.curvature[k], s - self.starts[k])
        return x - np.sin(heading) * d, y + np.cos(heading) * d, heading

    def locate(self, x: np.ndarray, y: np.ndarray, s_hint: float, window_m: float = 400.0):
        """Road coordinates (s, d) of world points (M,) within window_m of arc length s_hint.

        Each point belongs to the last arc whose start it has passed (is ahead of the normal line
        through the arc's start); joints share tangents, so this partitions the plane near the road.
        """
        near = np.flatnonzero((self.starts < s_hint + window_m)
                              & (np.append(self.starts[1:], np.inf) > s_hint - window_m))
        ahead = ((x[:, None] - self.x[near]) * np.cos(self.heading[near])
                 + (y[:, None] - self.y[near]) * np.sin(self.heading[near])) >= 0
        passed = np.where(ahead.any(axis=1), len(near) - 1 - np.argmax(ahead[:, ::-1], axis=1), 0)
        k = near[passed]
        kappa, heading = self.curvature[k], self.heading[k]
        cx = self.x[k] - np.sin(heading) / kappa
        cy = self.y[k] + np.cos(heading) / kappa
        vx, vy = x - cx, y - cy
        d = (1.0 - np.abs(kappa) * np.hypot(vx, vy)) / kappa
        tangent_angle = np.arctan2(vy, vx) + np.sign(kappa) * np.pi / 2
        s = self.starts[k] + _wrap(tangent_angle - heading) / kappa
        return s, d


def _windows(wall: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """Facade colour (M, 3) with a grid of windows; tex (M, 2) = (along the face, height above ground) m."""
    along, up = tex[:, 0], tex[:, 1]
    glass = (np.mod(along, 3.0) > 0.8) & (np.mod(along, 3.0) < 2.2) & (np.mod(up, 3.2) > 1.0) \
        & (np.mod(up, 3.2) < 2.3) & (up > 3.0)
    return np.where(glass[:, None], np.array(GLASS, np.float32) / 255.0 * 1.2, wall)


def _ground_texture(x: np.ndarray, y: np.ndarray, s: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(M,) brightness factor: smooth patches (world-fixed, so they stay put as the ego moves) and
    sidewalk slab joints."""
    patches = np.sin(0.9 * x + 0.4 * y) * np.sin(0.7 * y - 0.3 * x) + 0.5 * np.sin(0.21 * x - 0.17 * y)
    amplitude = np.where(label == TERRAIN, 0.12, 0.04)
    joints = (label == SIDEWALK) & (np.mod(s, 1.5) < 0.05)
    return (1.0 + amplitude * patches) * np.where(joints, 0.8, 1.0)


# -- placing the world at a time -------------------------------------------------------------------


def _place(world: World, road: _Road, time_s: float, ego, reach_m: float) -> Scene:
    ego_x, ego_y, heading, s_ego = ego
    s = world.obj_s + world.obj_speed * time_s
    # Arc length bounds distance along the road; lateral offsets add at most ~100 m.
    candidates = np.flatnonzero(np.abs(s - s_ego) < reach_m + world.obj_radius + 100.0)
    x, y, road_heading = road.pose(s[candidates], world.obj_d[candidates])
    c, si = math.cos(heading), math.sin(heading)
    dx, dy = x - ego_x, y - ego_y
    ox, oy = c * dx + si * dy, -si * dx + c * dy
    oyaw = road_heading + world.obj_yaw[candidates] - heading
    near = np.hypot(ox, oy) - world.obj_radius[candidates] < reach_m
    slot = np.full(len(world.obj_s), -1)
    slot[candidates[near]] = np.arange(near.sum())
    prims = np.flatnonzero(slot[world.prim_obj] >= 0)
    o = slot[world.prim_obj[prims]]
    px, py, pyaw = ox[near][o], oy[near][o], oyaw[near][o]
    oc, osn = np.cos(pyaw), np.sin(pyaw)
    offset = world.offset[prims]
    centre = np.stack([px + oc * offset[:, 0] - osn * offset[:, 1], py + osn * offset[:, 0] + oc * offset[:, 1],
                       offset[:, 2]], axis=1)
    yaw = pyaw + world.yaw[prims]
    half = world.half[prims]
    kind = world.kind[prims]
    return Scene(centre.astype(np.float32), np.cos(yaw).astype(np.float32), np.sin(yaw).astype(np.float32),
                  half.astype(np.float32), np.linalg.norm(half, axis=1), kind, world.label[prims],
                  world.color[prims], world.reflect[prims], world.material[prims],
                  {k: np.flatnonzero(kind == k) for k in (BOX, CYLINDER, ELLIPSOID)}, prims,
                  np.stack([px, py, pyaw], axis=1))


# -- sensors ---------------------------------------------------------------------------------------


def _lidar_rays(beams: int) -> Rays:
    """Ray ids run in firing order: azimuth column after column, beams bottom to top within one."""
    elevation = np.radians(np.linspace(LIDAR_FOV_DEG[0], LIDAR_FOV_DEG[1], beams))
    step = 2 * np.pi / LIDAR_AZIMUTH_STEPS
    # Clockwise from straight back, so the sweep passes straight ahead (azimuth 0) at its stamp.
    azimuth = np.pi - (np.arange(LIDAR_AZIMUTH_STEPS) + 0.5) * step
    ce, se = np.cos(elevation), np.sin(elevation)
    grid = np.stack([np.cos(azimuth)[:, None] * ce, np.sin(azimuth)[:, None] * ce,
                     np.broadcast_to(se, (LIDAR_AZIMUTH_STEPS, beams))], axis=-1)
    rays = make_rays(LIDAR_TO_EGO_M, grid, (12, 8), LIDAR_RANGE_M, whole_cone=False)
    rays.ring = np.tile(np.arange(beams, dtype=np.uint16), LIDAR_AZIMUTH_STEPS)
    period_s = SWEEP_PERIOD_NS * 1e-9
    rays.time = np.repeat((-azimuth / (2 * np.pi) * period_s).astype(np.float32), beams)
    return rays


@dataclass
class _CameraRig:
    name: str
    width: int
    height: int
    intrinsics: np.ndarray
    distortion: np.ndarray
    lidar_to_camera: np.ndarray
    optical_axis: np.ndarray  # (3,) float32, ego frame
    rays: Rays


def _distort(x, y, k):
    k1, k2, p1, p2, k3 = k
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def _undistort(xd: np.ndarray, yd: np.ndarray, k) -> tuple[np.ndarray, np.ndarray]:
    """Invert plumb_bob on normalised image coordinates by fixed-point iteration (float64)."""
    k1, k2, p1, p2, k3 = k
    x, y = xd.copy(), yd.copy()
    for _ in range(100):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        x = (xd - 2 * p1 * x * y - p2 * (r2 + 2 * x * x)) / radial
        y = (yd - p1 * (r2 + 2 * y * y) - 2 * p2 * x * y) / radial
    rx, ry = _distort(x, y, k)
    error = max(np.abs(rx - xd).max(), np.abs(ry - yd).max())
    r2 = (x * x + y * y).max()
    if error > 1e-9 or 1 + r2 * (3 * k1 + r2 * (5 * k2 + 7 * k3 * r2)) <= 0:
        raise ValueError(f"plumb_bob coefficients {k} cannot be inverted over the image (residual {error:.2g})")
    return x, y


def _camera_rig(index: int, width: int, height: int, distortion: bool, seed: int) -> _CameraRig:
    name, yaw_deg, position, fov_deg = CAMERA_MOUNTS[index]
    focal = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    K = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1.0]])
    coefficients = np.zeros(5)
    if distortion:
        # Each lens its own, slightly: a calibration, not a constant.
        coefficients = np.array(PLUMB_BOB) * np.random.default_rng([seed, 6, index]).uniform(0.85, 1.15, 5)
    yaw = math.radians(yaw_deg)
    c, s = math.cos(yaw), math.sin(yaw)
    camera_to_ego = np.eye(4)
    camera_to_ego[:3, :3] = [[s, 0, c], [-c, 0, s], [0, -1, 0]]  # columns: right, down, forward
    camera_to_ego[:3, 3] = position
    lidar_to_ego = np.eye(4)
    lidar_to_ego[:3, 3] = LIDAR_TO_EGO_M
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x, y = (u - K[0, 2]) / focal, (v - K[1, 2]) / focal
    if distortion:
        x, y = _undistort(x, y, coefficients)
    optical = np.stack([x, y, np.ones_like(x)], axis=-1)
    optical /= np.linalg.norm(optical, axis=-1, keepdims=True)
    grid = optical @ camera_to_ego[:3, :3].T
    rays = make_rays(position, grid, (16, 16), CAMERA_RANGE_M, whole_cone=True)
    return _CameraRig(name, width, height, K, coefficients, invert(camera_to_ego) @ lidar_to_ego,
                      camera_to_ego[:3, 2].astype(np.float32), rays)
