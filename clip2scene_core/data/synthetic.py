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
from dataclasses import dataclass, field

import numpy as np

from ..frame import Camera, Frame
from ..geometry import invert
from .source import FrameSource, SourceError

NUSCENES_CATEGORIES: dict[int, str] = {
    0: "noise",
    1: "animal",
    2: "human.pedestrian.adult",
    3: "human.pedestrian.child",
    4: "human.pedestrian.construction_worker",
    5: "human.pedestrian.personal_mobility",
    6: "human.pedestrian.police_officer",
    7: "human.pedestrian.stroller",
    8: "human.pedestrian.wheelchair",
    9: "movable_object.barrier",
    10: "movable_object.debris",
    11: "movable_object.pushable_pullable",
    12: "movable_object.trafficcone",
    13: "static_object.bicycle_rack",
    14: "vehicle.bicycle",
    15: "vehicle.bus.bendy",
    16: "vehicle.bus.rigid",
    17: "vehicle.car",
    18: "vehicle.construction",
    19: "vehicle.emergency.ambulance",
    20: "vehicle.emergency.police",
    21: "vehicle.motorcycle",
    22: "vehicle.trailer",
    23: "vehicle.truck",
    24: "flat.driveable_surface",
    25: "flat.other",
    26: "flat.sidewalk",
    27: "flat.terrain",
    28: "static.manmade",
    29: "static.other",
    30: "static.vegetation",
    31: "vehicle.ego",
}

PEDESTRIAN, WORKER, BARRIER, CONE = 2, 4, 9, 12
BICYCLE, BUS, CAR, CONSTRUCTION, MOTORCYCLE, TRAILER, TRUCK = 14, 16, 17, 18, 21, 22, 23
DRIVEABLE, OTHER_FLAT, SIDEWALK, TERRAIN, MANMADE, VEGETATION = 24, 25, 26, 27, 28, 30

SWEEP_PERIOD_NS = 100_000_000
FIRST_STAMP_NS = 1_700_000_000 * 10**9
EGO_SPEED_MPS = 8.0
ONCOMING_SPEED_MPS = 9.0  # one speed per lane, so that nothing drives through anything
CYCLIST_SPEED_MPS = 4.5
SUN_ELEVATION_RAD = math.radians(50.0)
LANE_WIDTH_M = 3.5
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
CHUNK_M = 100.0  # the world is generated in chunks of road, each from its own seed
BOX, CYLINDER, ELLIPSOID = 0, 1, 2
PLAIN, WINDOWS = 0, 1
GROUND, MISS = -1, -2
HIT_EPS_M = 1e-3
TICK_OFFSET = 1 << 20  # keeps per-tick seeds non-negative for sweeps before frame 0

GROUND_COLOR = {DRIVEABLE: (0.33, 0.33, 0.35), OTHER_FLAT: (0.60, 0.56, 0.50), SIDEWALK: (0.70, 0.68, 0.65),
                TERRAIN: (0.36, 0.48, 0.22)}
GROUND_REFLECTIVITY = {DRIVEABLE: 0.07, OTHER_FLAT: 0.15, SIDEWALK: 0.18, TERRAIN: 0.12}
MARKING_COLOR = np.array([[0, 0, 0], [0.92, 0.92, 0.90], [0.92, 0.76, 0.22]], dtype=np.float32)
MARKING_REFLECTIVITY = 0.5  # retroreflective paint shows in LiDAR intensity as it does in the image
SKY_HORIZON = np.array([0.80, 0.86, 0.92], dtype=np.float32)
SKY_ZENITH = np.array([0.33, 0.53, 0.84], dtype=np.float32)
GLASS = (55, 66, 78)
TYRE = (25, 25, 27)
CAR_COLORS = ((235, 235, 232), (28, 28, 32), (165, 167, 172), (160, 28, 30), (38, 62, 140), (92, 94, 98),
              (205, 180, 60), (60, 100, 70))
BUILDING_COLORS = ((168, 92, 70), (205, 192, 168), (150, 150, 155), (222, 216, 204), (120, 110, 100),
                   (180, 160, 130))
CLOTHES = ((40, 40, 60), (150, 30, 30), (30, 80, 140), (200, 200, 200), (70, 70, 70), (30, 90, 50),
           (180, 140, 60))
SKIN = ((224, 180, 150), (190, 140, 100), (130, 90, 60))


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
        self._layout = _Layout.generate(layout_rng)
        self._sun_azimuth = float(layout_rng.uniform(-math.pi, math.pi))
        self._road = _Road.generate(seed, s_min - 500.0, s_max + 500.0)
        self._world = _build_world(seed, self._layout, s_min, s_max, self.moving)
        self._lidar = _lidar_rays(beams)
        self._cameras = [_camera_rig(i, width, height, self.distortion, seed) for i in range(cameras)]
        self._cache: OrderedDict[int, Frame] = OrderedDict()

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
        return _copy_frame(self._cache[tick])

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

    def _render(self, tick: int) -> Frame:
        time_s = tick * SWEEP_PERIOD_NS * 1e-9
        stamp_ns = FIRST_STAMP_NS + tick * SWEEP_PERIOD_NS
        ego = self._ego_state(time_s)
        scene = _place(self._world, self._road, time_s, ego, CAMERA_RANGE_M if self._cameras else LIDAR_RANGE_M)
        rng = np.random.default_rng([self.seed, 5, tick + TICK_OFFSET])
        points, labels, fields = self._sweep(scene, ego, rng)
        lidar_to_ego = np.eye(4)
        lidar_to_ego[:3, 3] = LIDAR_TO_EGO_M
        cameras = [self._photograph(rig, scene, ego, stamp_ns) for rig in self._cameras]
        return Frame(points=points, stamp_ns=stamp_ns, fields=fields, lidar_to_ego=lidar_to_ego,
                     ego_pose=self.ego_pose_at(time_s), cameras=cameras, labels=labels,
                     name=f"synthetic-{self.seed}/{tick:06d}")

    def _sweep(self, scene: _Scene, ego, rng) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        rays = self._lidar
        hits = _cast(rays, scene)
        hit = np.flatnonzero(np.isfinite(hits.t))
        t, prim, dirs = hits.t[hit], hits.prim[hit], rays.dirs[hit]
        labels, reflectivity, _ = self._surface(scene, ego, rays.origin + t[:, None] * dirs, prim, hits.tex[hit])
        incidence = np.abs(np.einsum("ij,ij->i", hits.normal[hit], dirs))
        gain = np.exp(rng.normal(0.0, 0.15, len(hit)))
        intensity = np.clip(255.0 * reflectivity * (0.2 + 0.8 * incidence) * gain, 0, 255).astype(np.float32)
        distance = t + rng.normal(0.0, LIDAR_RANGE_NOISE_M, len(hit)).astype(np.float32)
        points = dirs * distance[:, None]
        fields = {"intensity": intensity, "ring": rays.ring[hit], "time": rays.time[hit]}
        return points.astype(np.float32), labels, fields

    def _photograph(self, rig: _CameraRig, scene: _Scene, ego, stamp_ns: int) -> Camera:
        rays = rig.rays
        hits = _cast(rays, scene)
        n = len(rays.dirs)
        label = np.zeros(n, np.int64)
        color = np.empty((n, 3), np.float32)
        miss = hits.prim == MISS
        elevation = np.clip(rays.dirs[miss, 2], 0, 1) ** 0.6
        color[miss] = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * elevation[:, None]
        hit = np.flatnonzero(~miss)
        t = hits.t[hit]
        label[hit], _, base = self._surface(scene, ego, rays.origin + t[:, None] * rays.dirs[hit], hits.prim[hit],
                                               hits.tex[hit])
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
                      distortion=rig.distortion, label_image=label.reshape(rig.height, rig.width), depth=depth,
                      frame_id=rig.name.lower())

    def _surface(self, scene: _Scene, ego, points: np.ndarray, prim: np.ndarray, tex: np.ndarray):
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
            x, y, heading, s_ego = ego
            c, s = math.cos(heading), math.sin(heading)
            gx = x + c * points[ground, 0] - s * points[ground, 1]
            gy = y + s * points[ground, 0] + c * points[ground, 1]
            along, lateral = self._road.locate(gx, gy, s_ego)
            g_label, marking = self._layout.ground(along, lateral)
            labels[ground] = g_label
            g_reflect = np.select([g_label == k for k in GROUND_REFLECTIVITY], list(GROUND_REFLECTIVITY.values()))
            reflectivity[ground] = np.where(marking > 0, MARKING_REFLECTIVITY, g_reflect)
            g_color = np.select([(g_label == k)[:, None] for k in GROUND_COLOR],
                                [np.array(v, np.float32) for v in GROUND_COLOR.values()])
            g_color = g_color * _ground_texture(gx, gy, along, g_label)[:, None]
            color[ground] = np.where((marking > 0)[:, None], MARKING_COLOR[marking], g_color)
        return labels, reflectivity, color


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SourceError(f"synthetic source: option {name}={value!r} must be an integer from {low} to {high}")
    if not low <= value <= high:
        raise SourceError(f"synthetic source: option {name}={value} is out of range; it must be from {low} to {high}")


def _copy_frame(frame: Frame) -> Frame:
    cameras = [Camera(name=c.name, image=c.image.copy(), intrinsics=c.intrinsics.copy(),
                      lidar_to_camera=c.lidar_to_camera.copy(), stamp_ns=c.stamp_ns,
                      distortion_model=c.distortion_model, distortion=c.distortion.copy(),
                      label_image=c.label_image.copy(), depth=None if c.depth is None else c.depth.copy(),
                      frame_id=c.frame_id) for c in frame.cameras]
    return Frame(points=frame.points.copy(), stamp_ns=frame.stamp_ns,
                 fields={k: v.copy() for k, v in frame.fields.items()}, lidar_to_ego=frame.lidar_to_ego.copy(),
                 ego_pose=frame.ego_pose.copy(), cameras=cameras, labels=frame.labels.copy(), name=frame.name,
                 frame_id=frame.frame_id)


# -- the road --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Lateral layout of the street, the same on both sides: |d| thresholds in metres."""

    median: float  # |d| below this: the median strip (flat.other)
    road: float  # carriageway edge: two lanes each way
    sidewalk: float  # sidewalk outer edge
    verge: float  # planted verge outer edge; building plots (terrain) beyond

    @classmethod
    def generate(cls, rng: np.random.Generator) -> _Layout:
        median = float(rng.uniform(0.8, 1.4))
        road = median + 2 * LANE_WIDTH_M
        sidewalk = road + float(rng.uniform(2.5, 4.0))
        return cls(median, road, sidewalk, sidewalk + float(rng.uniform(3.5, 6.0)))

    @property
    def ego_lane(self) -> float:
        return -(self.median + LANE_WIDTH_M / 2)

    def lane(self, index: int) -> float:
        """Centre d of lane index: 1, 2 left (oncoming) inner and outer; -1, -2 right inner and outer."""
        return math.copysign(self.median + LANE_WIDTH_M * (abs(index) - 0.5), index)

    def ground(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground label (M,) int64 and paint (M,) int64 (0 none, 1 white, 2 yellow) at road coordinates."""
        a = np.abs(d)
        label = np.select([a < self.median, a < self.road, a < self.sidewalk], [OTHER_FLAT, DRIVEABLE, SIDEWALK],
                          TERRAIN).astype(np.int64)
        lane_line = (np.abs(a - self.median - LANE_WIDTH_M) < 0.075) & (np.mod(s, 9.0) < 3.0)
        edge_line = np.abs(a - self.road + 0.3) < 0.075
        median_line = np.abs(a - self.median - 0.2) < 0.075
        marking = np.where(median_line, 2, np.where(lane_line | edge_line, 1, 0))
        return label, marking


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


# -- world content ---------------------------------------------------------------------------------


@dataclass
class _World:
    """Objects in road coordinates and their primitives in object coordinates.

    An object at time t sits at arc length obj_s + obj_speed * t, lateral offset obj_d, facing the
    road direction plus obj_yaw. Primitive centres are (x forward, y left, z up) in its object's
    frame, metres; half extents are box half sizes, (r, r, half height) for cylinders, radii for
    ellipsoids.
    """

    obj_s: np.ndarray
    obj_d: np.ndarray
    obj_speed: np.ndarray
    obj_yaw: np.ndarray
    obj_radius: np.ndarray  # bounding radius of all its primitives around its origin
    prim_obj: np.ndarray
    kind: np.ndarray
    offset: np.ndarray
    yaw: np.ndarray
    half: np.ndarray
    label: np.ndarray
    color: np.ndarray  # (P, 3) float32 0-1
    reflect: np.ndarray
    material: np.ndarray


class _Builder:
    """Collects objects and primitives; the shape helpers take sizes the way one measures them."""

    def __init__(self, moving: bool):
        self.moving = moving
        self.objects: list[tuple[float, float, float, float]] = []
        self.prims: list[tuple] = []

    def object(self, s: float, d: float, speed: float = 0.0, yaw: float = 0.0) -> int:
        self.objects.append((s, d, speed if self.moving else 0.0, yaw))
        return len(self.objects) - 1

    def box(self, obj, x, y, z0, length, width, height, label, color, reflect=0.3, yaw=0.0, material=PLAIN):
        self.prims.append((obj, BOX, (x, y, z0 + height / 2), yaw, (length / 2, width / 2, height / 2), label, color,
                           reflect, material))

    def cylinder(self, obj, x, y, z0, z1, radius, label, color, reflect=0.3):
        self.prims.append((obj, CYLINDER, (x, y, (z0 + z1) / 2), 0.0, (radius, radius, (z1 - z0) / 2), label, color,
                           reflect, PLAIN))

    def ellipsoid(self, obj, x, y, z, radii, label, color, reflect=0.3, yaw=0.0):
        self.prims.append((obj, ELLIPSOID, (x, y, z), yaw, radii, label, color, reflect, PLAIN))

    def finish(self) -> _World:
        objects = np.array(self.objects, dtype=np.float64).reshape(-1, 4)
        obj, kind, offset, yaw, half, label, color, reflect, material = zip(*self.prims, strict=True)
        obj = np.array(obj, np.int64)
        offset = np.array(offset, np.float64)
        half = np.array(half, np.float64)
        reach = np.hypot(offset[:, 0], offset[:, 1]) + np.linalg.norm(half, axis=1)
        radius = np.zeros(len(objects))
        np.maximum.at(radius, obj, reach)
        return _World(objects[:, 0], objects[:, 1], objects[:, 2], objects[:, 3], radius, obj,
                      np.array(kind, np.int8), offset, np.array(yaw), half, np.array(label, np.int64),
                      np.array(color, np.float32) / 255.0, np.array(reflect, np.float32),
                      np.array(material, np.int8))


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.08) -> tuple[float, float, float]:
    """A colour varied per object, so that no two cars or buildings look cut from one mould."""
    scale = rng.uniform(1 - amount, 1 + amount) * rng.uniform(1 - amount / 2, 1 + amount / 2, 3)
    return tuple(np.clip(np.asarray(rgb) * scale, 0, 255))


def _pick(rng: np.random.Generator, palette):
    return _jitter(rng, palette[rng.integers(len(palette))])


# Each maker draws its sizes, adds one object centred at s_start + length / 2 and returns the length
# it occupies along the road.

def _car(b: _Builder, rng, s_start, d, speed=0.0, yaw=0.0) -> float:
    length, width, height = rng.uniform(4.2, 4.9), rng.uniform(1.78, 1.95), rng.uniform(1.45, 1.7)
    paint = _pick(rng, CAR_COLORS)
    o = b.object(s_start + length / 2, d, speed, yaw)
    b.box(o, 0, 0, 0.28, length, width, 0.7, CAR, paint, 0.35)
    cabin = 0.52 * length
    b.box(o, -0.06 * length, 0, 0.98, cabin, width - 0.12, height - 1.03, CAR, GLASS, 0.08)
    b.box(o, -0.06 * length, 0, height - 0.06, cabin - 0.3, width - 0.2, 0.06, CAR, paint, 0.35)
    for x in (0.33, -0.32):
        b.box(o, x * length, 0, 0, 0.64, width + 0.04, 0.64, CAR, TYRE, 0.05)
    return length


def _bus(b, rng, s_start, d, speed=0.0, yaw=0.0) -> float:
    length, width, height = rng.uniform(10.5, 12.0), 2.8, rng.uniform(3.0, 3.3)
    paint = _pick(rng, ((215, 190, 40), (40, 90, 170), (200, 60, 50), (230, 230, 230)))
    o = b.object(s_start + length / 2, d, speed, yaw)
    b.box(o, 0, 0, 0.35, length, width, height - 0.35, BUS, paint, 0.35)
    b.box(o, 0, 0, 1.3, length + 0.04, width + 0.04, 1.2, BUS, GLASS, 0.08)
    for x in (0.3, -0.3):
        b.box(o, x * length, 0, 0, 1.0, width + 0.06, 0.95, BUS, TYRE, 0.05)
    return length


def _truck(b, rng, s_start, d, speed=0.0, yaw=0.0) -> float:
    length, width = rng.uniform(7.0, 8.5), 2.45
    cab, box_color = _pick(rng, ((200, 50, 40), (240, 240, 240), (40, 80, 160), (60, 120, 60))), _pick(
        rng, ((215, 215, 210), (180, 180, 175), (120, 60, 40)))
    o = b.object(s_start + length / 2, d, speed, yaw)
    b.box(o, length / 2 - 1.1, 0, 0.5, 2.2, width, 2.5, TRUCK, cab, 0.35)
    b.box(o, length / 2 - 0.35, 0, 1.5, 0.72, width - 0.2, 1.0, TRUCK, GLASS, 0.08)
    b.box(o, -1.25, 0, 0.95, length - 2.6, width + 0.05, rng.uniform(2.5, 2.8), TRUCK, box_color, 0.3)
    for x in (length / 2 - 1.2, -length / 2 + 1.3):
        b.box(o, x, 0, 0, 1.0, width + 0.08, 1.0, TRUCK, TYRE, 0.05)
    return length


def _semi(b, rng, s_start, d, speed=0.0, yaw=0.0) -> float:
    """A tractor (truck) with a box trailer (trailer), moving as one object."""
    trailer_length, width = rng.uniform(9.0, 11.0), 2.55
    length = trailer_length + 3.0
    cab = _pick(rng, ((30, 60, 130), (170, 30, 30), (235, 235, 235), (40, 40, 45)))
    body = _pick(rng, ((205, 205, 200), (150, 40, 30), (90, 110, 130)))
    o = b.object(s_start + length / 2, d, speed, yaw)
    front = length / 2
    b.box(o, front - 1.25, 0, 0.6, 2.5, 2.5, 2.6, TRUCK, cab, 0.35)
    b.box(o, front - 0.5, 0, 1.7, 1.02, 2.35, 1.0, TRUCK, GLASS, 0.08)
    b.box(o, front - 2.6, 0, 0.3, 2.0, 1.2, 0.7, TRUCK, TYRE, 0.1)
    b.box(o, front - 1.4, 0, 0, 1.0, 2.58, 1.0, TRUCK, TYRE, 0.05)
    b.box(o, -front + trailer_length / 2, 0, 1.15, trailer_length, width, 2.85, TRAILER, body, 0.3)
    b.box(o, -front + 1.5, 0, 0, 2.4, width + 0.04, 1.05, TRAILER, TYRE, 0.05)
    b.box(o, -front + trailer_length - 2.5, 0, 0, 0.25, 2.0, 1.15, TRAILER, (60, 60, 60), 0.1)
    return length


def _excavator(b, rng, s_start, d, speed=0.0, yaw=0.0) -> float:
    length = 6.4
    yellow = _jitter(rng, (240, 175, 25))
    o = b.object(s_start + length / 2, d, speed, yaw)
    b.box(o, -1.0, 0, 0, 4.2, 2.8, 0.9, CONSTRUCTION, (55, 55, 55), 0.1)
    b.box(o, -1.3, 0, 0.9, 3.2, 2.6, 1.2, CONSTRUCTION, yellow, 0.4)
    b.box(o, -0.1, 0.7, 2.1, 1.1, 1.0, 1.1, CONSTRUCTION, GLASS, 0.1)
    b.box(o, 0.9, -0.3, 2.5, 3.0, 0.45, 0.5, CONSTRUCTION, yellow, 0.4)
    b.box(o, 2.5, -0.3, 0.8, 0.4, 0.4, 2.2, CONSTRUCTION, yellow, 0.4)
    b.box(o, 2.75, -0.3, 0.0, 0.9, 1.1, 0.75, CONSTRUCTION, (70, 70, 70), 0.2)
    return length


def _two_wheeler(b, rng, s_start, d, speed=0.0, yaw=0.0, motor=False, rider=False) -> float:
    label = MOTORCYCLE if motor else BICYCLE
    length = rng.uniform(2.0, 2.2) if motor else rng.uniform(1.65, 1.8)
    wheel = 0.64 if motor else 0.68
    frame = _pick(rng, ((30, 30, 30), (180, 20, 20), (40, 120, 200), (230, 230, 230), (40, 150, 80)))
    o = b.object(s_start + length / 2, d, speed, yaw)
    for x in (length / 2 - wheel / 2, -length / 2 + wheel / 2):
        b.box(o, x, 0, 0, wheel, 0.12 if motor else 0.05, wheel, label, TYRE, 0.1)
    if motor:
        b.box(o, 0, 0, 0.3, length - 0.7, 0.55, 0.6, label, frame, 0.35)
    else:
        b.box(o, 0, 0, 0.45, length - 0.7, 0.06, 0.35, label, frame, 0.3)
    b.box(o, length / 2 - 0.45, 0, 0.95 if motor else 0.9, 0.1, 0.65, 0.08, label, (40, 40, 40), 0.3)
    if rider:
        seat = 0.85 if motor else 0.95
        b.cylinder(o, -0.1, 0, seat, seat + 0.6, 0.21, label, _pick(rng, CLOTHES), 0.15)
        b.ellipsoid(o, -0.05, 0, seat + 0.74, (0.13, 0.13, 0.15), label, (50, 50, 55) if motor else _pick(rng, SKIN))
    return length


def _pedestrian(b, rng, s, d, speed=0.0, yaw=0.0, label=PEDESTRIAN) -> None:
    scale = rng.uniform(0.92, 1.08)
    shirt = _jitter(rng, (250, 120, 20)) if label == WORKER else _pick(rng, CLOTHES)
    o = b.object(s, d, speed, yaw)
    b.box(o, 0, 0, 0, 0.26, 0.36, 0.86 * scale, label, _pick(rng, CLOTHES), 0.15)
    b.cylinder(o, 0, 0, 0.86 * scale, 1.46 * scale, 0.24, label, shirt, 0.5 if label == WORKER else 0.15)
    b.ellipsoid(o, 0, 0, 1.6 * scale, (0.1, 0.1, 0.125), label, _pick(rng, SKIN), 0.1)


def _cone(b, s, d) -> None:
    o = b.object(s, d)
    b.box(o, 0, 0, 0, 0.4, 0.4, 0.04, CONE, (30, 30, 30), 0.2)
    for z0, z1, r, color, reflect in ((0.04, 0.3, 0.16, (250, 100, 20), 0.4), (0.3, 0.5, 0.115, (240, 240, 240), 0.9),
                                      (0.5, 0.72, 0.07, (250, 100, 20), 0.4)):
        b.cylinder(o, 0, 0, z0, z1, r, CONE, color, reflect)


def _barrier(b, rng, s, d, yaw) -> None:
    color = (230, 60, 40) if rng.random() < 0.5 else (232, 232, 228)
    o = b.object(s, d, 0.0, yaw)
    b.box(o, 0, 0, 0, 1.9, 0.55, 0.3, BARRIER, color, 0.5)
    b.box(o, 0, 0, 0.3, 1.9, 0.25, 0.65, BARRIER, color, 0.6)


def _construction_zone(b: _Builder, rng, s_start, d_lane) -> float:
    """A closed lane, 24 m: a cone taper from the curb across the lane, barriers, cones along the
    open side, an excavator and a worker inside, barriers and a cone at the end."""
    length = 24.0
    inward = math.copysign(1.0, -d_lane)  # towards the open lanes
    for i, across in enumerate((-1.2, -0.2, 0.8)):
        _cone(b, s_start + 0.5 + 2.0 * i, d_lane + inward * across)
    work_start, work_end = s_start + 6.0, s_start + length - 1.5
    for offset in (-0.95, 0.95):
        _barrier(b, rng, work_start + 0.5, d_lane + offset, math.pi / 2)
        _barrier(b, rng, work_end - 0.5, d_lane + offset, math.pi / 2)
    for s in np.arange(work_start + 2.5, work_end - 1, 3.0):
        _cone(b, float(s), d_lane + inward * (LANE_WIDTH_M / 2 - 0.3))
    _cone(b, s_start + length - 0.5, d_lane + inward * (LANE_WIDTH_M / 2 - 0.3))
    _excavator(b, rng, work_start + 4.0, d_lane, yaw=math.pi * (rng.random() < 0.5))
    _pedestrian(b, rng, work_start + 2.0 + rng.uniform(0, 2), d_lane + rng.uniform(-1, 1), yaw=rng.uniform(-3, 3),
                label=WORKER)
    return length


def _tree(b, rng, s, d) -> None:
    o = b.object(s, d)
    trunk = rng.uniform(2.2, 3.2)
    b.cylinder(o, 0, 0, 0, trunk + 0.5, rng.uniform(0.14, 0.24), VEGETATION, _jitter(rng, (92, 72, 52)), 0.2)
    crown = (rng.uniform(1.8, 3.0), rng.uniform(2.0, 3.2))
    green = _jitter(rng, (60, 112, 45), 0.15)
    b.ellipsoid(o, 0, 0, trunk + crown[1] * 0.85, (crown[0], crown[0], crown[1]), VEGETATION, green, 0.15)
    if rng.random() < 0.6:
        lobe = crown[0] * 0.7
        b.ellipsoid(o, rng.uniform(-1, 1), rng.uniform(-1, 1), trunk + crown[1] * 1.3, (lobe, lobe, lobe * 0.9),
                    VEGETATION, _jitter(rng, green, 0.08), 0.15)


def _street_light(b, rng, s, d, side) -> None:
    o = b.object(s, d)
    grey = _jitter(rng, (112, 112, 118), 0.05)
    height = rng.uniform(7.0, 8.0)
    b.cylinder(o, 0, 0, 0, height, 0.1, MANMADE, grey, 0.35)
    b.box(o, 0, -side * 1.1, height - 0.15, 0.12, 2.2, 0.12, MANMADE, grey, 0.35)
    b.box(o, 0, -side * 2.1, height - 0.3, 0.3, 0.6, 0.18, MANMADE, (200, 200, 190), 0.4)


def _sign(b, rng, s, d) -> None:
    o = b.object(s, d)
    b.cylinder(o, 0, 0, 0, 2.9, 0.04, MANMADE, (140, 140, 145), 0.35)
    face = ((30, 80, 170), (200, 30, 30), (240, 240, 240), (240, 200, 30))[rng.integers(4)]
    b.box(o, 0, 0, 2.2, 0.05, 0.7, 0.7, MANMADE, face, 0.9)


def _side(b: _Builder, rng, s0, s1, side: int, layout: _Layout) -> None:
    """Buildings, verge, street furniture and pedestrians on one side (side +1 left, -1 right)."""
    s = s0 + rng.uniform(0, 6)
    while True:
        length, gap = rng.uniform(10, 32), rng.uniform(2, 10)
        if s + length > s1:
            break
        setback = layout.verge + rng.uniform(0.5, 4.0)
        if rng.random() < 0.15:  # an open plot behind a wall
            o = b.object(s + length / 2, side * (setback + 0.15))
            b.box(o, 0, 0, 0, length, 0.3, rng.uniform(1.4, 2.2), MANMADE, _pick(rng, BUILDING_COLORS), 0.3)
        else:
            depth = rng.uniform(8, 18)
            o = b.object(s + length / 2, side * (setback + depth / 2))
            b.box(o, 0, 0, 0, length, depth, rng.uniform(6, 24), MANMADE, _pick(rng, BUILDING_COLORS), 0.3,
                  material=WINDOWS)
        s += length + gap
    for _ in range(rng.integers(1, 4)):  # a taller second row for the skyline
        o = b.object(rng.uniform(s0 + 15, s1 - 15), side * (layout.verge + rng.uniform(35, 60)))
        b.box(o, 0, 0, 0, rng.uniform(15, 30), rng.uniform(12, 25), rng.uniform(20, 45), MANMADE,
              _pick(rng, BUILDING_COLORS), 0.3, material=WINDOWS)
    verge_mid = (layout.sidewalk + layout.verge) / 2
    half_verge = (layout.verge - layout.sidewalk) / 2
    s = s0 + rng.uniform(0, 5)
    while s < s1 - 2:
        _tree(b, rng, s, side * (verge_mid + rng.uniform(-0.3, 0.3) * half_verge))
        if rng.random() < 0.5:
            o = b.object(s + rng.uniform(2.5, 4.5), side * (verge_mid + rng.uniform(-0.5, 0.5) * half_verge))
            r = rng.uniform(0.6, 1.2)
            b.ellipsoid(o, 0, 0, 0.25, (r, r * rng.uniform(0.8, 1.2), rng.uniform(0.5, 0.9)), VEGETATION,
                        _jitter(rng, (70, 120, 50), 0.15), 0.15)
        s += rng.uniform(7, 14)
    if rng.random() < 0.4:
        length = rng.uniform(4, 10)
        o = b.object(rng.uniform(s0, s1 - length) + length / 2, side * (layout.verge - 0.6))
        b.box(o, 0, 0, 0, length, 0.8, rng.uniform(0.9, 1.4), VEGETATION, _jitter(rng, (50, 100, 40)), 0.15)
    s = s0 + rng.uniform(0, 30)
    while s < s1:
        _street_light(b, rng, s, side * (layout.road + 0.45), side)
        s += rng.uniform(27, 33)
    for _ in range(rng.integers(1, 3)):
        _sign(b, rng, rng.uniform(s0, s1), side * (layout.road + 0.3))
    # Along the outer edge of the sidewalk, clear of pedestrians: parked two-wheelers in the first
    # half of the chunk, a utility work spot (cones round a barrier) in the second.
    edge = side * (layout.sidewalk - 0.45)
    for motor in [False] * int(rng.integers(1, 3)) + [True]:
        _two_wheeler(b, rng, rng.uniform(s0, s0 + CHUNK_M / 2 - 2.2), edge, yaw=math.pi * (rng.random() < 0.5),
                     motor=motor)
    spot = rng.uniform(s0 + CHUNK_M / 2 + 1, s1 - 6)
    _cone(b, spot, edge)
    _barrier(b, rng, spot + 2.0, edge, 0.0)
    _cone(b, spot + 4.0, edge)
    for _ in range(rng.poisson(8)):
        walking = rng.random() < 0.75
        direction = 1.0 if rng.random() < 0.5 else -1.0
        speed = direction * rng.uniform(1.0, 1.6) if walking else 0.0
        yaw = (0.0 if direction > 0 else math.pi) if walking else rng.uniform(-math.pi, math.pi)
        _pedestrian(b, rng, rng.uniform(s0, s1), side * rng.uniform(layout.road + 0.8, layout.sidewalk - 1.05),
                    speed, yaw)


def _parking_lane(b: _Builder, rng, s0, s1, layout: _Layout) -> None:
    """The right outer lane: every large vehicle class, a motorcycle, a bicycle and a construction
    zone in a random order (always all of them: the evaluation classes must show up in any short
    drive), then parked cars while there is room."""
    d = layout.lane(-2)
    deck = ["truck", "semi", "bus", "motorcycle", "bicycle", "construction"]
    deck = [deck[i] for i in rng.permutation(len(deck))] + ["car"] * 12
    s = s0 + rng.uniform(0.5, 3.0)
    for item in deck:
        if item == "car" and s + 5.0 > s1:
            break
        yaw = rng.normal(0, 0.03)
        if item == "construction":
            s += _construction_zone(b, rng, s, d)
        elif item in ("motorcycle", "bicycle"):
            curb = d - LANE_WIDTH_M / 2 + 0.6
            s += _two_wheeler(b, rng, s, curb, yaw=yaw + math.pi * (rng.random() < 0.3), motor=item == "motorcycle")
        else:
            maker = {"truck": _truck, "semi": _semi, "bus": _bus, "car": _car}[item]
            s += maker(b, rng, s, d - 0.25, yaw=yaw)
        s += rng.uniform(1.0, 3.0) if rng.random() < 0.85 else rng.uniform(5.0, 9.0)


def _oncoming(b: _Builder, rng, s0, s1, layout: _Layout) -> None:
    """Left lanes: motor traffic in the inner one, cyclists in the outer one, each lane one speed
    so that nothing drives through anything."""
    s = s0 + rng.uniform(0, 20)
    while True:
        item = rng.choice(["car"] * 6 + ["bus", "truck", "motorcycle", "semi"])
        if s + 14 > s1:
            break
        if item == "motorcycle":
            s += _two_wheeler(b, rng, s, layout.lane(1), -ONCOMING_SPEED_MPS, math.pi, motor=True, rider=True)
        else:
            maker = {"car": _car, "bus": _bus, "truck": _truck, "semi": _semi}[item]
            s += maker(b, rng, s, layout.lane(1), -ONCOMING_SPEED_MPS, math.pi)
        s += rng.uniform(12, 40)
    s = s0 + rng.uniform(0, 30)
    while s + 2 < s1:
        s += _two_wheeler(b, rng, s, layout.road - 1.0, -CYCLIST_SPEED_MPS, math.pi, rider=True) + rng.uniform(15, 50)


def _build_world(seed: int, layout: _Layout, s_min: float, s_max: float, moving: bool) -> _World:
    b = _Builder(moving)
    for chunk in range(math.floor(s_min / CHUNK_M), math.floor(s_max / CHUNK_M) + 1):
        rng = np.random.default_rng([seed, 4, chunk + TICK_OFFSET])
        s0, s1 = chunk * CHUNK_M, (chunk + 1) * CHUNK_M
        _side(b, rng, s0, s1, 1, layout)
        _side(b, rng, s0, s1, -1, layout)
        _parking_lane(b, rng, s0, s1, layout)
        _oncoming(b, rng, s0, s1, layout)
    return b.finish()


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


@dataclass
class _Scene:
    """Primitives at one time in the ego frame (x forward, y left, z up), float32, within reach."""

    centre: np.ndarray  # (P, 3)
    cos: np.ndarray  # (P,) cos and sin of yaw about z
    sin: np.ndarray
    half: np.ndarray  # (P, 3)
    bound: np.ndarray  # (P,) bounding sphere radius
    kind: np.ndarray
    label: np.ndarray
    color: np.ndarray
    reflect: np.ndarray
    material: np.ndarray
    by_kind: dict[int, np.ndarray] = field(default_factory=dict)


def _place(world: _World, road: _Road, time_s: float, ego, reach_m: float) -> _Scene:
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
    return _Scene(centre.astype(np.float32), np.cos(yaw).astype(np.float32), np.sin(yaw).astype(np.float32),
                  half.astype(np.float32), np.linalg.norm(half, axis=1), kind, world.label[prims],
                  world.color[prims], world.reflect[prims], world.material[prims],
                  {k: np.flatnonzero(kind == k) for k in (BOX, CYLINDER, ELLIPSOID)})


# -- sensors ---------------------------------------------------------------------------------------


@dataclass
class _Rays:
    """A sensor's rays in the ego frame, grouped into tiles of neighbouring rays for culling.

    origin: (3,) float32; dirs: (R, 3) float32 unit vectors.
    tile_rays: (R,) ray ids ordered by tile; tile_start, tile_count: (T,) into tile_rays.
    tile_dir: (T, 3) float64 unit axis; tile_cos, tile_sin: (T,) of the half-angle covering its rays.
    axis, cos_half, sin_half: one cone around all rays (None for a 360-degree sensor).
    """

    origin: np.ndarray
    dirs: np.ndarray
    reach: float
    tile_rays: np.ndarray
    tile_start: np.ndarray
    tile_count: np.ndarray
    tile_dir: np.ndarray
    tile_cos: np.ndarray
    tile_sin: np.ndarray
    axis: np.ndarray | None = None
    cos_half: float = -1.0
    sin_half: float = 0.0
    ring: np.ndarray | None = None  # LiDAR only: (R,) uint16 beam, (R,) float32 time in the sweep, s
    time: np.ndarray | None = None


def _cone_of(dirs: np.ndarray, margin: float = 1e-3) -> tuple[np.ndarray, float]:
    axis = dirs.sum(axis=0)
    axis /= np.linalg.norm(axis)
    return axis, float(np.arccos(np.clip((dirs @ axis).min(), -1, 1))) + margin


def _make_rays(origin, grid: np.ndarray, tile: tuple[int, int], reach: float, whole_cone: bool) -> _Rays:
    """grid: (A, B, 3) unit directions, flattened row-major into ray ids; tiles of tile[0] x tile[1]."""
    a, b = grid.shape[:2]
    ta, tb = -(-a // tile[0]), -(-b // tile[1])
    tile_of = ((np.arange(a) // tile[0])[:, None] * tb + (np.arange(b) // tile[1])[None, :]).ravel()
    dirs = grid.reshape(-1, 3).astype(np.float64)
    order = np.argsort(tile_of, kind="stable")
    count = np.bincount(tile_of, minlength=ta * tb)
    start = np.cumsum(count) - count
    tile_dir = np.add.reduceat(dirs[order], start, axis=0)
    tile_dir /= np.linalg.norm(tile_dir, axis=1, keepdims=True)
    cos_min = np.minimum.reduceat(np.einsum("ij,ij->i", dirs[order], tile_dir[tile_of[order]]), start)
    half = np.arccos(np.clip(cos_min, -1, 1)) + 1e-4
    rays = _Rays(np.asarray(origin, np.float32), dirs.astype(np.float32), reach, order, start, count, tile_dir,
                 np.cos(half), np.sin(half))
    if whole_cone:
        rays.axis, angle = _cone_of(dirs)
        rays.cos_half, rays.sin_half = math.cos(angle), math.sin(angle)
    return rays


def _lidar_rays(beams: int) -> _Rays:
    """Ray ids run in firing order: azimuth column after column, beams bottom to top within one."""
    elevation = np.radians(np.linspace(LIDAR_FOV_DEG[0], LIDAR_FOV_DEG[1], beams))
    step = 2 * np.pi / LIDAR_AZIMUTH_STEPS
    # Clockwise from straight back, so the sweep passes straight ahead (azimuth 0) at its stamp.
    azimuth = np.pi - (np.arange(LIDAR_AZIMUTH_STEPS) + 0.5) * step
    ce, se = np.cos(elevation), np.sin(elevation)
    grid = np.stack([np.cos(azimuth)[:, None] * ce, np.sin(azimuth)[:, None] * ce,
                     np.broadcast_to(se, (LIDAR_AZIMUTH_STEPS, beams))], axis=-1)
    rays = _make_rays(LIDAR_TO_EGO_M, grid, (12, 8), LIDAR_RANGE_M, whole_cone=False)
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
    rays: _Rays


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
    rays = _make_rays(position, grid, (16, 16), CAMERA_RANGE_M, whole_cone=True)
    return _CameraRig(name, width, height, K, coefficients, invert(camera_to_ego) @ lidar_to_ego,
                      camera_to_ego[:3, 2].astype(np.float32), rays)


# -- ray casting -----------------------------------------------------------------------------------


@dataclass
class _Hits:
    """First hit per ray: t (R,) float32 metres (inf: none within reach), prim (R,) int64 (a scene
    primitive, GROUND or MISS), normal (R, 3) float32 facing the ray, tex (R, 2) float32 face
    coordinates for textured primitives."""

    t: np.ndarray
    prim: np.ndarray
    normal: np.ndarray
    tex: np.ndarray


def _candidates(rays: _Rays, scene: _Scene, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tile, primitive) pairs, primitives from members, whose bounding sphere meets the tile's cone
    of rays; boxes must also pass _refine_boxes."""
    centre, bound = scene.centre[members], scene.bound[members]
    rel = centre.astype(np.float64) - rays.origin
    dist = np.linalg.norm(rel, axis=1)
    inside = dist <= bound
    sin_b = np.where(inside, 1.0, bound / np.maximum(dist, 1e-9))
    cos_b = np.sqrt(1.0 - sin_b**2)
    unit = rel / np.maximum(dist, 1e-9)[:, None]
    ok = dist - bound < rays.reach
    if rays.axis is not None:
        ok &= inside | (unit @ rays.axis >= rays.cos_half * cos_b - rays.sin_half * sin_b)
    keep = np.flatnonzero(ok)
    if not keep.size:
        return keep, keep
    # angle(tile axis, centre) <= tile half-angle + sphere half-angle, compared as cosines.
    cand = (rays.tile_dir @ unit[keep].T) >= (rays.tile_cos[:, None] * cos_b[keep] - rays.tile_sin[:, None]
                                              * sin_b[keep])
    cand |= inside[keep]
    tiles, k = np.nonzero(cand)
    prims = members[keep[k]]
    if tiles.size and scene.kind[members[0]] == BOX:
        tiles, prims = _refine_boxes(rays, scene, tiles, prims, dist[keep[k]] + bound[keep[k]])
    return tiles, prims


def _refine_boxes(rays: _Rays, scene: _Scene, tiles, prims, farthest):
    """Keep the (tile, box) pairs whose tile axis ray meets the box grown by farthest * sin(half-angle).

    A ray within the tile's half-angle that hits the box at distance D <= farthest passes within
    D * sin(half-angle) of the axis ray, so no hit is lost; bounding spheres of long buildings are
    far looser than this.
    """
    c, half = scene.centre[prims].astype(np.float64), scene.half[prims].astype(np.float64)
    cos, sin = scene.cos[prims].astype(np.float64), scene.sin[prims].astype(np.float64)
    axis = rays.tile_dir[tiles]
    lx, ly = _to_local(rays.origin[0] - c[:, 0], rays.origin[1] - c[:, 1], cos, sin)
    dx, dy = _to_local(axis[:, 0], axis[:, 1], cos, sin)
    grow = farthest * rays.tile_sin[tiles] + 1e-3
    near = np.full(len(prims), -np.inf)
    far = np.full(len(prims), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for o, d, h in ((lx, dx, half[:, 0]), (ly, dy, half[:, 1]), (rays.origin[2] - c[:, 2], axis[:, 2], half[:, 2])):
            t1, t2 = (-h - grow - o) / d, (h + grow - o) / d
            # An axis parallel to a slab meets it everywhere or nowhere.
            parallel = d == 0
            inside = np.abs(o) <= h + grow
            t1 = np.where(parallel, np.where(inside, -np.inf, np.inf), t1)
            t2 = np.where(parallel, np.where(inside, np.inf, -np.inf), t2)
            near = np.maximum(near, np.minimum(t1, t2))
            far = np.minimum(far, np.maximum(t1, t2))
    keep = (near <= far) & (far >= 0)
    return tiles[keep], prims[keep]


def _expand(rays: _Rays, tiles: np.ndarray, prims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (ray, primitive) pair of the given (tile, primitive) pairs."""
    count = rays.tile_count[tiles]
    seg = np.cumsum(count) - count
    position = np.arange(count.sum()) + np.repeat(rays.tile_start[tiles] - seg, count)
    return rays.tile_rays[position], np.repeat(prims, count)


def _to_local(vx, vy, cos, sin):
    return cos * vx + sin * vy, cos * vy - sin * vx


def _t_box(origin, dirs, scene: _Scene, prim):
    c, h = scene.centre[prim], scene.half[prim]
    cos, sin = scene.cos[prim], scene.sin[prim]
    lx, ly = _to_local(origin[0] - c[:, 0], origin[1] - c[:, 1], cos, sin)
    dx, dy = _to_local(dirs[:, 0], dirs[:, 1], cos, sin)
    near = np.full(len(prim), -np.inf, np.float32)
    far = np.full(len(prim), np.inf, np.float32)
    for o, d, hh in ((lx, dx, h[:, 0]), (ly, dy, h[:, 1]), (origin[2] - c[:, 2], dirs[:, 2], h[:, 2])):
        t1, t2 = (-hh - o) / d, (hh - o) / d
        np.maximum(near, np.minimum(t1, t2), out=near)
        np.minimum(far, np.maximum(t1, t2), out=far)
    return np.where((near <= far) & (near > HIT_EPS_M), near, np.inf)


def _t_cylinder(origin, dirs, scene: _Scene, prim):
    c, r, hz = scene.centre[prim], scene.half[prim, 0], scene.half[prim, 2]
    rx, ry, rz = origin[0] - c[:, 0], origin[1] - c[:, 1], origin[2] - c[:, 2]
    ux, uy, uz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    a = ux * ux + uy * uy
    b = rx * ux + ry * uy
    disc = b * b - a * (rx * rx + ry * ry - r * r)
    side = (-b - np.sqrt(np.maximum(disc, 0))) / a
    side_ok = (disc >= 0) & (side > HIT_EPS_M) & (np.abs(rz + side * uz) <= hz)
    # Only the cap facing the origin can be the first hit.
    cap = (np.where(rz > 0, hz, -hz) - rz) / uz
    cap_ok = (np.abs(rz) > hz) & (cap > HIT_EPS_M) & ((rx + cap * ux) ** 2 + (ry + cap * uy) ** 2 <= r * r)
    return np.minimum(np.where(side_ok, side, np.inf), np.where(cap_ok, cap, np.inf))


def _t_ellipsoid(origin, dirs, scene: _Scene, prim):
    c, h = scene.centre[prim], scene.half[prim]
    cos, sin = scene.cos[prim], scene.sin[prim]
    lx, ly = _to_local(origin[0] - c[:, 0], origin[1] - c[:, 1], cos, sin)
    dx, dy = _to_local(dirs[:, 0], dirs[:, 1], cos, sin)
    L = np.stack([lx, ly, origin[2] - c[:, 2]], axis=1) / h
    D = np.stack([dx, dy, dirs[:, 2]], axis=1) / h
    a = np.einsum("ij,ij->i", D, D)
    b = np.einsum("ij,ij->i", L, D)
    disc = b * b - a * (np.einsum("ij,ij->i", L, L) - 1)
    t = (-b - np.sqrt(np.maximum(disc, 0))) / a
    return np.where((disc >= 0) & (t > HIT_EPS_M), t, np.inf)


INTERSECT = {BOX: _t_box, CYLINDER: _t_cylinder, ELLIPSOID: _t_ellipsoid}


def _surface_details(kind, points, dirs, scene: _Scene, prim) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (M, 3) facing the rays and face coordinates (M, 2) at hit points (M, 3), ego frame."""
    c, h = scene.centre[prim], scene.half[prim]
    cos, sin = scene.cos[prim], scene.sin[prim]
    qx, qy = _to_local(points[:, 0] - c[:, 0], points[:, 1] - c[:, 1], cos, sin)
    q = np.stack([qx, qy, points[:, 2] - c[:, 2]], axis=1)
    tex = np.zeros((len(prim), 2), np.float32)
    if kind == BOX:
        axis = np.argmax(np.abs(q) / h, axis=1)
        local = np.zeros_like(q)
        local[np.arange(len(q)), axis] = np.sign(q[np.arange(len(q)), axis])
        tex[:, 0] = np.where(axis == 0, q[:, 1], q[:, 0])
        tex[:, 1] = q[:, 2] + h[:, 2]
    elif kind == CYLINDER:
        radial = np.hypot(q[:, 0], q[:, 1]) / h[:, 0]
        on_cap = np.abs(q[:, 2]) / h[:, 2] > radial
        local = np.where(on_cap[:, None], np.stack([0 * qx, 0 * qx, np.sign(q[:, 2])], axis=1),
                         np.stack([q[:, 0], q[:, 1], 0 * qx], axis=1))
    else:
        local = q / h**2
    normal = np.stack([cos * local[:, 0] - sin * local[:, 1], sin * local[:, 0] + cos * local[:, 1], local[:, 2]],
                      axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    facing = np.where(np.einsum("ij,ij->i", normal, dirs) > 0, -1.0, 1.0).astype(np.float32)
    return normal * facing[:, None], tex


def _cast(rays: _Rays, scene: _Scene) -> _Hits:
    """First hit of every ray against the scene's primitives and the ground plane z = 0."""
    n = len(rays.dirs)
    found_ray, found_prim, found_t = [], [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for kind, intersect in INTERSECT.items():
            members = scene.by_kind[kind]
            if not members.size:
                continue
            tiles, prims = _candidates(rays, scene, members)
            if not tiles.size:
                continue
            ray, prim = _expand(rays, tiles, prims)
            t = intersect(rays.origin, rays.dirs[ray], scene, prim)
            hit = t < rays.reach
            found_ray.append(ray[hit])
            found_prim.append(prim[hit])
            found_t.append(t[hit].astype(np.float32))
        t_best = np.full(n, np.inf, np.float32)
        prim_best = np.full(n, MISS, np.int64)
        if found_ray:
            ray, prim, t = np.concatenate(found_ray), np.concatenate(found_prim), np.concatenate(found_t)
            np.minimum.at(t_best, ray, t)
            win = t == t_best[ray]
            prim_best[ray[win]] = prim[win]
        uz = rays.dirs[:, 2]
        t_ground = np.where(uz < -1e-6, -rays.origin[2] / uz, np.inf).astype(np.float32)
        ground = (t_ground < t_best) & (t_ground < rays.reach)
    t_best[ground] = t_ground[ground]
    prim_best[ground] = GROUND
    normal = np.zeros((n, 3), np.float32)
    normal[ground, 2] = 1.0
    tex = np.zeros((n, 2), np.float32)
    on_object = np.flatnonzero(prim_best >= 0)
    kinds = scene.kind[prim_best[on_object]]
    for kind in INTERSECT:
        sel = on_object[kinds == kind]
        if sel.size:
            points = rays.origin + t_best[sel, None] * rays.dirs[sel]
            normal[sel], tex[sel] = _surface_details(kind, points, rays.dirs[sel], scene, prim_best[sel])
    return _Hits(t_best, prim_best, normal, tex)
