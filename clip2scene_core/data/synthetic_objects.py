"""The synthetic world's content: the street's lateral layout and every object on it, each built from
oriented boxes, vertical cylinders and ellipsoids carrying a raw nuScenes lidarseg label, a colour and a
LiDAR reflectivity (see synthetic.py for the world as a whole)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .synthetic_raycast import BOX, CYLINDER, ELLIPSOID

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

ONCOMING_SPEED_MPS = 9.0  # one speed per lane, so that nothing drives through anything
CYCLIST_SPEED_MPS = 4.5
LANE_WIDTH_M = 3.5
CHUNK_M = 100.0  # the world is generated in chunks of road, each from its own seed
PLAIN, WINDOWS = 0, 1
TICK_OFFSET = 1 << 20  # keeps per-tick seeds non-negative for sweeps before frame 0
GLASS = (55, 66, 78)
TYRE = (25, 25, 27)

CAR_COLORS = ((235, 235, 232), (28, 28, 32), (165, 167, 172), (160, 28, 30), (38, 62, 140), (92, 94, 98),
              (205, 180, 60), (60, 100, 70))
BUILDING_COLORS = ((168, 92, 70), (205, 192, 168), (150, 150, 155), (222, 216, 204), (120, 110, 100),
                   (180, 160, 130))
CLOTHES = ((40, 40, 60), (150, 30, 30), (30, 80, 140), (200, 200, 200), (70, 70, 70), (30, 90, 50),
           (180, 140, 60))
SKIN = ((224, 180, 150), (190, 140, 100), (130, 90, 60))


@dataclass(frozen=True)
class Layout:
    """Lateral layout of the street, the same on both sides: |d| thresholds in metres."""

    median: float  # |d| below this: the median strip (flat.other)
    road: float  # carriageway edge: two lanes each way
    sidewalk: float  # sidewalk outer edge
    verge: float  # planted verge outer edge; building plots (terrain) beyond

    @classmethod
    def generate(cls, rng: np.random.Generator) -> Layout:
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


@dataclass
class World:
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

    def finish(self) -> World:
        objects = np.array(self.objects, dtype=np.float64).reshape(-1, 4)
        obj, kind, offset, yaw, half, label, color, reflect, material = zip(*self.prims, strict=True)
        obj = np.array(obj, np.int64)
        offset = np.array(offset, np.float64)
        half = np.array(half, np.float64)
        reach = np.hypot(offset[:, 0], offset[:, 1]) + np.linalg.norm(half, axis=1)
        radius = np.zeros(len(objects))
        np.maximum.at(radius, obj, reach)
        return World(objects[:, 0], objects[:, 1], objects[:, 2], objects[:, 3], radius, obj,
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


def _side(b: _Builder, rng, s0, s1, side: int, layout: Layout) -> None:
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


def _parking_lane(b: _Builder, rng, s0, s1, layout: Layout) -> None:
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


def _oncoming(b: _Builder, rng, s0, s1, layout: Layout) -> None:
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


def build_world(seed: int, layout: Layout, s_min: float, s_max: float, moving: bool) -> World:
    b = _Builder(moving)
    for chunk in range(math.floor(s_min / CHUNK_M), math.floor(s_max / CHUNK_M) + 1):
        rng = np.random.default_rng([seed, 4, chunk + TICK_OFFSET])
        s0, s1 = chunk * CHUNK_M, (chunk + 1) * CHUNK_M
        _side(b, rng, s0, s1, 1, layout)
        _side(b, rng, s0, s1, -1, layout)
        _parking_lane(b, rng, s0, s1, layout)
        _oncoming(b, rng, s0, s1, layout)
    return b.finish()


# -- ground truth of objects -----------------------------------------------------------------------


@dataclass
class ObjectTruth:
    """The objects a sweep's points lie on. An instance is the part of one world object that carries one label
    (a semi is a truck and a trailer, as nuScenes annotates them).

    instances: (N,) int64 per point, an index into boxes and labels; -1 for ground points.
    boxes: the instances' boxes, LiDAR frame, each spanning all of its primitives (also the parts no ray hit).
    labels: (K,) int64 raw nuScenes label of each instance; num_points: (K,) int64 points on it.
    """

    instances: np.ndarray
    boxes: list
    labels: np.ndarray
    num_points: np.ndarray


def object_truth(world: World, scene, prim: np.ndarray, lidar_in_ego: np.ndarray) -> ObjectTruth:
    """ObjectTruth of points lying on scene primitives prim (N,) (negative: the ground); scene a synthetic_raycast
    Scene placed from world; lidar_in_ego (3,) the LiDAR origin in the ego frame (the LiDAR is not rotated)."""
    from ..geometry import Box3D

    instances = np.full(len(prim), -1, np.int64)
    on_object = np.flatnonzero(prim >= 0)
    source = scene.source
    # One key per (world object, label) of every scene primitive.
    keys = world.prim_obj[source] * 64 + world.label[source]
    unique, key_of_prim = np.unique(keys, return_inverse=True)
    hit_keys, instance_of_hit = np.unique(key_of_prim[prim[on_object]], return_inverse=True)
    instances[on_object] = instance_of_hit
    # Each primitive's extent in its object's frame: centre +- half sizes turned by its own yaw.
    offset, half, yaw = world.offset[source], world.half[source], world.yaw[source]
    reach_x = np.abs(np.cos(yaw)) * half[:, 0] + np.abs(np.sin(yaw)) * half[:, 1]
    reach_y = np.abs(np.sin(yaw)) * half[:, 0] + np.abs(np.cos(yaw)) * half[:, 1]
    low = np.stack([offset[:, 0] - reach_x, offset[:, 1] - reach_y, offset[:, 2] - half[:, 2]], axis=1)
    high = np.stack([offset[:, 0] + reach_x, offset[:, 1] + reach_y, offset[:, 2] + half[:, 2]], axis=1)
    lows = np.full((len(unique), 3), np.inf)
    highs = np.full((len(unique), 3), -np.inf)
    np.minimum.at(lows, key_of_prim, low)
    np.maximum.at(highs, key_of_prim, high)
    pose = np.zeros((len(unique), 3))
    pose[key_of_prim] = scene.object_pose
    boxes = []
    for k in hit_keys:
        x, y, heading = pose[k]
        c, s = math.cos(heading), math.sin(heading)
        middle = (lows[k] + highs[k]) / 2
        centre = np.array([x + c * middle[0] - s * middle[1], y + s * middle[0] + c * middle[1], middle[2]])
        boxes.append(Box3D(centre - lidar_in_ego, highs[k] - lows[k], math.atan2(s, c)))
    return ObjectTruth(instances, boxes, (unique[hit_keys] % 64).astype(np.int64),
                       np.bincount(instance_of_hit, minlength=len(hit_keys)).astype(np.int64))
