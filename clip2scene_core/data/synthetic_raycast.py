"""Ray casting for the synthetic world: primitives placed in the ego frame (`Scene`), sensor rays grouped
into tiles for culling (`Rays`), and the first hit of every ray against boxes, cylinders, ellipsoids and the
ground plane (`cast`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
GROUND, MISS = -1, -2
HIT_EPS_M = 1e-3


@dataclass
class Scene:
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
    # Where each primitive comes from: its index in the world and its object's pose in the ego frame
    # (x, y, yaw), for the ground truth of objects.
    source: np.ndarray | None = None
    object_pose: np.ndarray | None = None


@dataclass
class Rays:
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


def make_rays(origin, grid: np.ndarray, tile: tuple[int, int], reach: float, whole_cone: bool) -> Rays:
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
    rays = Rays(np.asarray(origin, np.float32), dirs.astype(np.float32), reach, order, start, count, tile_dir,
                 np.cos(half), np.sin(half))
    if whole_cone:
        rays.axis, angle = _cone_of(dirs)
        rays.cos_half, rays.sin_half = math.cos(angle), math.sin(angle)
    return rays


@dataclass
class Hits:
    """First hit per ray: t (R,) float32 metres (inf: none within reach), prim (R,) int64 (a scene
    primitive, GROUND or MISS), normal (R, 3) float32 facing the ray, tex (R, 2) float32 face
    coordinates for textured primitives."""

    t: np.ndarray
    prim: np.ndarray
    normal: np.ndarray
    tex: np.ndarray


def _candidates(rays: Rays, scene: Scene, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _refine_boxes(rays: Rays, scene: Scene, tiles, prims, farthest):
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


def _expand(rays: Rays, tiles: np.ndarray, prims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (ray, primitive) pair of the given (tile, primitive) pairs."""
    count = rays.tile_count[tiles]
    seg = np.cumsum(count) - count
    position = np.arange(count.sum()) + np.repeat(rays.tile_start[tiles] - seg, count)
    return rays.tile_rays[position], np.repeat(prims, count)


def _to_local(vx, vy, cos, sin):
    return cos * vx + sin * vy, cos * vy - sin * vx


def _t_box(origin, dirs, scene: Scene, prim):
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


def _t_cylinder(origin, dirs, scene: Scene, prim):
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


def _t_ellipsoid(origin, dirs, scene: Scene, prim):
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


def _surface_details(kind, points, dirs, scene: Scene, prim) -> tuple[np.ndarray, np.ndarray]:
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


def cast(rays: Rays, scene: Scene) -> Hits:
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
    return Hits(t_best, prim_best, normal, tex)
