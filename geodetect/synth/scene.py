"""The layout of a synthetic suburb in metres: a street grid at an angle, blocks of
parcels with houses, yards and pools, parks with retention ponds, stores with parking."""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from shapely import affinity
from shapely.geometry import Point, Polygon, box
from shapely.prepared import prep

from geodetect.synth.objects import (
    PAVING_COLOURS,
    SHADOW,
    Z_BASE,
    Z_LAWN,
    Z_PAVING,
    Z_ROAD,
    Z_SOIL,
    Z_TRAMPOLINE,
    Z_WALK,
    Drawing,
    Vintage,
    apply_frame,
    blob,
)


class Suburb:
    """Lays a suburb out in metres (street grid, blocks, parcels, yards, parks, stores)
    and has `Drawing` draw what goes where."""

    def __init__(
        self,
        rng: np.random.Generator,
        width: int,
        height: int,
        gsd: float,
        vintage: Vintage | None = None,
        *,
        confusers: bool = False,
    ) -> None:
        self.rng = rng
        self.gsd = gsd
        self.width, self.height = width, height
        angle = float(rng.uniform(-20, 20)) if rng.random() < 0.7 else 0.0
        # Street frame: metres, centred on the scene, axes along the road grid.
        self.street_to_px = (
            Affine.translation(width / 2, height / 2)
            @ Affine.rotation(angle)
            @ Affine.scale(1 / gsd)
        )
        # The sun's azimuth and shadow length; which pools this flight shows.
        self.draw = Drawing(rng, width, height, gsd, vintage, confusers=confusers)
        # Residential parcels (scene pixels) and the numbers of the pools in each.
        self.parcels: list[tuple[Polygon, list[int]]] = []
        self.scene_px = self.draw.scene_px
        self.scene_street = prep(apply_frame(self.scene_px, ~self.street_to_px).buffer(25.0))
        self.lawn = np.array([rng.uniform(90, 106), rng.uniform(104, 120), rng.uniform(64, 78)])
        self.pool_rate = rng.uniform(0.40, 0.52)

    def visible(self, street_geom) -> bool:
        return self.scene_street.intersects(street_geom)

    # ---- the street grid
    def build(self) -> None:
        rng = self.rng
        corners = shapely.get_coordinates(apply_frame(self.scene_px, ~self.street_to_px))
        half_x, half_y = np.abs(corners).max(axis=0) + 60.0
        road_w = rng.uniform(7.0, 9.0)
        verge = rng.uniform(1.2, 3.0)
        walk = 1.5 if rng.random() < 0.7 else 0.0
        setback = road_w / 2 + verge + walk + 0.6  # road centre line to parcel front
        asphalt = np.full(3, rng.uniform(84, 108)) * (1.0, 1.0, 0.97)
        road_tex = (0.10, 0.0, 0.07, 0.0)
        self.draw.ground.add(
            apply_frame(
                box(-half_x - 80, -half_y - 80, half_x + 80, half_y + 80), self.street_to_px
            ),
            self.draw.jitter(self.lawn * 0.97, 0.03),
            z=Z_BASE,
            texture=(0.1, 0.08, 0.04, 0),
        )
        v = -half_y - rng.uniform(0, 80)
        while v < half_y:
            depths = rng.uniform(31.0, 42.0, size=2)
            v_next = v + 2 * setback + depths.sum()
            self.road(
                box(-half_x - 80, v - road_w / 2, half_x + 80, v + road_w / 2),
                asphalt,
                road_tex,
                along=(1.0, 0.0),
                lane=road_w / 2 - 1.3,
            )
            u = -half_x - rng.uniform(0, 250)
            while u < half_x:
                length = rng.uniform(110.0, 260.0)
                u_next = u + 2 * setback + length
                self.road(
                    box(u - road_w / 2, v, u + road_w / 2, v_next),
                    asphalt,
                    road_tex,
                    along=(0.0, 1.0),
                    lane=road_w / 2 - 1.3,
                )
                block = box(u + setback, v + setback, u_next - setback, v_next - setback)
                if self.visible(block):
                    if walk:
                        ring = block.buffer(0.6 + walk, join_style="mitre").difference(
                            block.buffer(0.6, join_style="mitre")
                        )
                        self.draw.ground.add(
                            apply_frame(ring, self.street_to_px),
                            self.draw.jitter((196, 194, 186), 0.03),
                            z=Z_WALK,
                            texture=(0.05, 0.0, 0.04, 0),
                        )
                    self.block(block, depths, setback - road_w / 2, asphalt)
                u = u_next
            v = v_next
        self.road(
            box(-half_x - 80, v - road_w / 2, half_x + 80, v + road_w / 2),
            asphalt,
            road_tex,
            along=(1.0, 0.0),
            lane=road_w / 2 - 1.3,
        )

    def road(self, rect: Polygon, asphalt, texture, *, along, lane: float) -> None:
        if not self.visible(rect):
            return
        self.draw.ground.add(
            apply_frame(rect, self.street_to_px),
            self.draw.jitter(asphalt, 0.03),
            z=Z_ROAD,
            texture=texture,
        )
        # Cars parked at the kerb or driving in the lanes.
        rng = self.rng
        (u0, v0, u1, v1) = rect.bounds
        cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
        extent = (u1 - u0) if along[0] else (v1 - v0)
        s = -extent / 2 + rng.uniform(0, 40)
        while s < extent / 2:
            side = 1 if rng.random() < 0.5 else -1
            offset = side * (lane if rng.random() < 0.6 else lane - 2.2)
            if along[0]:
                x, y, heading = cu + s, cv + offset, 0.0 if side > 0 else 180.0
            else:
                x, y, heading = cu + offset, cv + s, 90.0 if side > 0 else 270.0
            car_frame = self.street_to_px @ Affine.translation(x, y) @ Affine.rotation(heading)
            if self.visible(Point(x, y)):
                self.draw.car(car_frame)
            s += rng.uniform(12, 70)

    def block(self, block: Polygon, depths, to_road: float, asphalt) -> None:
        rng = self.rng
        kind = rng.random()
        if kind < 0.07:
            return self.park(block)
        if kind < 0.10:
            return self.commercial(block, asphalt)
        u0, v0, u1, v1 = block.bounds
        edges = [0.0]
        length = u1 - u0
        while length - edges[-1] > 55.0:
            edges.append(edges[-1] + rng.uniform(20.0, 35.0))
        if length - edges[-1] > 35.0:
            edges.append(edges[-1] + (length - edges[-1]) / 2)
        edges.append(length)
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            for row in (0, 1):
                depth = depths[row]
                if row == 0:  # fronts the road above; local y grows into the lot
                    frame = Affine.translation(u0 + a, v0)
                else:  # fronts the road below: flip y
                    frame = Affine.translation(u0 + a, v1) @ Affine.scale(1, -1)
                lot = box(0, 0, b - a, depth)
                if self.visible(apply_frame(lot, frame)):
                    self.parcel(self.street_to_px @ frame, b - a, depth, to_road)

    # ---- a residential parcel (local metres: x along the street, y from the front)
    def parcel(self, frame: Affine, width: float, depth: float, to_road: float) -> None:
        rng = self.rng
        pools: list[int] = []
        self.parcels.append((apply_frame(box(0, 0, width, depth), frame), pools))
        lawn = self.lawn * rng.uniform(0.94, 1.06, size=3)
        if rng.random() < 0.12:  # parched lawn
            lawn = lawn * 0.65 + np.array([150, 142, 105]) * 0.35
        self.draw.ground.add(
            apply_frame(box(0, 0, width, depth), frame),
            self.draw.jitter(lawn, 0.04),
            z=Z_LAWN,
            texture=(0.12, 0.10, 0.07, 0.0),
        )
        if rng.random() < 0.035:
            return self.vacant(frame, width, depth)
        taken: list[Polygon] = []
        side = rng.uniform(1.5, 3.5)
        house_w = float(np.clip(rng.uniform(12.0, 24.0), 8.0, width - 2 * side))
        house_d = rng.uniform(10.0, 15.5)
        setback = rng.uniform(5.5, 8.5)
        hx = side + rng.uniform(0.0, max(0.0, width - 2 * side - house_w))
        main = (hx, setback, hx + house_w, setback + house_d)
        rects = [main]
        left = rng.random() < 0.5
        if rng.random() < 0.65 and setback > 4.0:
            gw, gd = rng.uniform(5.5, 7.0), rng.uniform(3.0, setback - 2.0)
            gx = hx if left else hx + house_w - gw
            rects.append((gx, setback - gd, gx + gw, setback))
            drive_x, drive_end = (gx + 0.3, gx + gw - 0.3), setback - gd
        else:
            dx = hx + 0.5 if left else hx + house_w - 5.5
            drive_x, drive_end = (dx, dx + 5.0), setback
        paving = self.draw.jitter(PAVING_COLOURS[0], 0.04)
        driveway = box(drive_x[0], -to_road, drive_x[1], drive_end)
        self.draw.ground.add(
            apply_frame(driveway, frame), paving, z=Z_PAVING, texture=(0.05, 0.0, 0.04, 0.0)
        )
        for _ in range(int(rng.choice([0, 1, 1, 2], p=[0.45, 0.25, 0.15, 0.15]))):
            y = rng.uniform(-to_road + 2.6, max(-to_road + 2.7, drive_end - 2.6))
            self.draw.car(frame @ Affine.translation(sum(drive_x) / 2, y) @ Affine.rotation(90))
        self.draw.house(frame, rects)
        taken.append(box(hx - 0.5, setback - 8, hx + house_w + 0.5, setback + house_d + 0.5))
        yard = (1.2, setback + house_d + 1.2, width - 1.2, depth - 1.2)
        if rng.random() < 0.45:  # patio / lanai behind the house
            px0 = rng.uniform(hx, hx + house_w * 0.5)
            patio = box(
                px0,
                setback + house_d,
                min(px0 + rng.uniform(4, 9), hx + house_w),
                setback + house_d + rng.uniform(2.5, 4.0),
            )
            self.draw.ground.add(
                apply_frame(patio, frame),
                self.draw.jitter(paving, 0.03),
                z=Z_PAVING,
                texture=(0.04, 0.0, 0.04, 0.0),
            )
        if rng.random() < self.pool_rate:
            before = len(self.draw.placed)
            deck = self.draw.pool(frame, yard)
            pools.extend(range(before, len(self.draw.placed)))
            if deck is not None:
                taken.append(deck)
        self.yard_things(frame, yard, taken)
        self.plant(frame, width, depth, taken, n=int(rng.poisson(2.0)))
        self.yard_court(frame, yard, taken)

    # ---- yards, trees and odd things
    def yard_things(self, frame: Affine, yard, taken: list[Polygon]) -> None:
        rng = self.rng
        yx0, yy0, yx1, yy1 = yard

        def spot(w: float, h: float, angle: float = 0.0):
            for _ in range(6):
                if yx1 - yx0 < w + 0.5 or yy1 - yy0 < h + 0.5:
                    return None
                cx, cy = (
                    rng.uniform(yx0 + w / 2, yx1 - w / 2),
                    rng.uniform(yy0 + h / 2, yy1 - h / 2),
                )
                geom = affinity.translate(
                    affinity.rotate(box(-w / 2, -h / 2, w / 2, h / 2), angle), cx, cy
                )
                if not any(geom.intersects(t) for t in taken):
                    taken.append(geom.buffer(0.5))
                    return geom
            return None

        if rng.random() < 0.15 and (geom := spot(rng.uniform(2.5, 4.0), rng.uniform(2.5, 3.5))):
            shed = apply_frame(geom, frame)
            colour = self.draw.jitter(
                [(190, 190, 186), (120, 100, 84), (96, 98, 100)][int(rng.integers(3))]
            )
            self.draw.roofs.add(shed, colour, texture=(0.0, 0.0, 0.06, 0.0))
            shadow = self.draw.cast(shed, rng.uniform(2.6, 3.4))
            self.draw.shadows.add(shadow, SHADOW)
            self.draw.distractor(shadow.difference(shed), "shadow")
        if rng.random() < 0.05 and (geom := spot(4.6, 4.6)):
            c = geom.centroid
            disc = apply_frame(Point(c.x, c.y).buffer(rng.uniform(1.8, 2.3)), frame)
            pad = self.draw.jitter(
                [(40, 84, 170), (46, 120, 60), (170, 40, 40)][int(rng.integers(3))]
            )
            self.draw.ground.add(disc, pad, z=Z_TRAMPOLINE)
            mat = disc.buffer(-0.35 / self.gsd)
            self.draw.ground.add(mat, (30, 30, 33), z=Z_TRAMPOLINE, texture=(0.0, 0.0, 0.05, 0.0))
            self.draw.shadows.add(self.draw.cast(disc, 1.0, hull=False).difference(disc), SHADOW)
            self.draw.distractor(disc, "trampoline")
        if rng.random() < 0.03 and (
            geom := spot(rng.uniform(3, 6), rng.uniform(2, 4), rng.uniform(0, 90))
        ):
            self.draw.tarp(apply_frame(geom, frame), self.draw.ground)
        if rng.random() < 0.15:
            r = rng.uniform(1.0, 3.0)
            c = (rng.uniform(0, yx1 + 1), rng.uniform(0, yy1 + 1))
            soil = affinity.translate(blob(rng, r, rough=0.15), *c)
            if not any(soil.intersects(t) for t in taken):
                self.draw.ground.add(
                    apply_frame(soil, frame),
                    self.draw.jitter((176, 160, 128), 0.06),
                    z=Z_SOIL,
                    texture=(0.12, 0.05, 0.05, 0.0),
                )

    def yard_court(self, frame: Affine, yard, taken: list[Polygon]) -> None:
        """Now and then a basketball half court in a back yard big enough for one,
        drawn last, from a random stream of its own, clearing the trees it falls on: the
        rest of the suburb stays where it was without courts."""
        rng = self.draw.extra_rng
        if not self.draw.confusers or rng.random() >= 0.04:
            return
        yx0, yy0, yx1, yy1 = yard
        length, width = rng.uniform(7.0, 10.0), rng.uniform(6.0, 9.0)
        for _ in range(4):
            if yx1 - yx0 < length + 1 or yy1 - yy0 < width + 1:
                return
            cx = rng.uniform(yx0 + length / 2, yx1 - length / 2)
            cy = rng.uniform(yy0 + width / 2, yy1 - width / 2)
            outline = box(cx - length / 2, cy - width / 2, cx + length / 2, cy + width / 2)
            if not any(outline.intersects(t) for t in taken):
                taken.append(outline.buffer(0.5))
                self.draw.court(frame @ Affine.translation(cx, cy), length, width, tennis=False)
                return

    def plant(self, frame: Affine, width: float, depth: float, taken, *, n: int) -> None:
        rng = self.rng
        for _ in range(n):
            x, y = rng.uniform(0.5, width - 0.5), rng.uniform(0.5, depth - 0.5)
            if any(t.contains(Point(x, y)) for t in taken):
                continue
            self.draw.tree(frame, x, y, radius=rng.uniform(1.5, 6.0))

    def vacant(self, frame: Affine, width: float, depth: float) -> None:
        rng = self.rng
        sand = np.array([176, 162, 128]) * rng.uniform(0.3, 0.8) + self.lawn * 0.6
        self.draw.ground.add(
            apply_frame(box(0.5, 0.5, width - 0.5, depth - 0.5), frame),
            self.draw.jitter(sand / (sand.max() / 170), 0.06),
            z=Z_SOIL,
            texture=(0.22, 0.10, 0.06, 0.0),
        )
        taken = []
        if rng.random() < 0.5:
            r = rng.uniform(2.5, min(7.0, width / 2 - 2, depth / 2 - 2))
            taken.append(self.draw.pond(frame, width / 2, depth / 2, r))
        self.plant(frame, width, depth, taken, n=int(rng.poisson(2.5)))

    def park(self, block: Polygon) -> None:
        """A green with a retention pond and trees around it."""
        rng = self.rng
        frame = self.street_to_px @ Affine.translation(*block.bounds[:2])
        u0, v0, u1, v1 = block.bounds
        w, h = u1 - u0, v1 - v0
        self.draw.ground.add(
            apply_frame(box(0, 0, w, h), frame),
            self.draw.jitter(self.lawn * 1.03, 0.04),
            z=Z_LAWN,
            texture=(0.12, 0.06, 0.04, 0.0),
        )
        water = self.draw.pond(
            frame, w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2, min(w, h) * rng.uniform(0.22, 0.34)
        )
        shore = water.buffer(3.0)
        near_water = prep(shore)
        for _ in range(int(rng.poisson(w * h / 600))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            if near_water.contains(Point(x, y)):
                continue
            if min(x, y, w - x, h - y) < 8 or rng.random() < 0.5:
                self.draw.tree(frame, x, y, radius=rng.uniform(2.0, 6.0))
        extra = self.draw.extra_rng
        if (
            self.draw.confusers and extra.random() < 0.6
        ):  # tennis courts (36.6 x 18.3 m each) at one end
            pairs = 2 if extra.random() < 0.5 else 1
            ends = (19.0, w - 19.0) if extra.random() < 0.5 else (w - 19.0, 19.0)
            for cx in ends:
                courts = box(cx - 18.3, h / 2 - 9.15 * pairs, cx + 18.3, h / 2 + 9.15 * pairs)
                if h >= 18.3 * pairs + 4 and not courts.intersects(shore):
                    for k in range(pairs):
                        cy = h / 2 + (k - (pairs - 1) / 2) * 18.3
                        court = frame @ Affine.translation(cx, cy)
                        self.draw.court(court, 36.6, 18.3, tennis=True)
                    break

    def commercial(self, block: Polygon, asphalt) -> None:
        """A parking lot round a flat-roofed store."""
        rng = self.rng
        frame = self.street_to_px @ Affine.translation(*block.bounds[:2])
        u0, v0, u1, v1 = block.bounds
        w, h = u1 - u0, v1 - v0
        self.draw.ground.add(
            apply_frame(box(0, 0, w, h), frame),
            self.draw.jitter(asphalt * 1.05, 0.03),
            z=Z_PAVING,
            texture=(0.10, 0.0, 0.07, 0.0),
        )
        bw, bh = w * rng.uniform(0.35, 0.6), h * rng.uniform(0.4, 0.6)
        bx = rng.uniform(2, w - bw - 2)
        building = box(bx, h - bh - 2, bx + bw, h - 2)
        building_px = apply_frame(building, frame)
        self.draw.shadows.add(self.draw.cast(building_px, rng.uniform(6, 10)), SHADOW)
        self.draw.roofs.add(
            building_px, self.draw.jitter((212, 212, 208), 0.03), texture=(0.03, 0.0, 0.04, 0.0)
        )
        for _ in range(int(rng.integers(3, 9))):
            ax, ay = rng.uniform(bx + 2, bx + bw - 4), rng.uniform(h - bh, h - 6)
            unit = apply_frame(box(ax, ay, ax + 2, ay + 1.5), frame)
            self.draw.shadows.add(self.draw.cast(unit, 1.5), SHADOW)
            self.draw.roofs.add(unit, (150, 152, 154), z=1)
        stripe, half = (232, 232, 226), max(0.06, 0.5 * self.gsd)  # at least a pixel wide
        for row_y in np.arange(4.0, h - bh - 8.0, 14.0):
            for col_x in np.arange(3.0, w - 3.0, 2.8):
                self.draw.ground.add(
                    apply_frame(box(col_x - half, row_y, col_x + half, row_y + 5.0), frame),
                    stripe,
                    z=Z_PAVING,  # added after the lot, so drawn over it
                )
                if rng.random() < 0.55:
                    self.draw.car(
                        frame @ Affine.translation(col_x + 1.4, row_y + 2.5) @ Affine.rotation(90)
                    )
