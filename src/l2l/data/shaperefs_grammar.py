"""ShapeRefs expressions: a small query language, its resolver, and the grammar that words it.

Every expression is generated from a structured `Query` and kept only if `refers_uniquely` says it picks
exactly one object of the scene. Each spatial predicate has a *strict* reading (the relation holds with a
margin, so a reader would say it) and a *loose* one (the relation might be read into the scene when
positions are nearly tied). An expression is unique when its loose reading admits the target alone and
its strict reading admits the target: near-ties make it ambiguous and it is discarded.

All horizontal predicates are mirror-symmetric, so flipping the image and swapping the words "left" and
"right" (`l2l.data.augment.flip_text`) keeps the referent.

One module (just over 400 lines): the query type, its resolver and its wording must agree predicate by predicate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

# Nominal scales differ by at least this factor for "bigger"/"smaller" to hold strictly.
SIZE_RATIO = 1.25
# Distances differ by at least this factor for "next to" to hold strictly.
NEAR_RATIO = 1.3
# Position margin as a share of the longer image side.
MARGIN_SHARE = 0.05

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "purple": ("purple", "violet"),
    "orange": ("orange",),
    "white": ("white",),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "big": ("big", "large")}
# Category -> synonyms (first is the category name). Plural nouns take "are".
NOUNS: dict[str, tuple[str, ...]] = {
    "disc": ("disc", "circle", "dot"),
    "ring": ("ring", "donut", "hoop"),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "triangle": ("triangle",),
    "crescent": ("crescent", "moon", "crescent moon"),
    "heart": ("heart",),
    "arrow": ("arrow",),
    "diamond": ("diamond", "rhombus"),
    "person": ("person", "man", "guy"),
    "bottle": ("bottle", "flask"),
    "scissors": ("scissors", "pair of scissors"),
    "spoons": ("spoons", "measuring spoons"),
}
PLURAL_NOUNS = frozenset({"scissors", "spoons", "measuring spoons"})
GENERIC_NOUNS: tuple[str, ...] = ("one", "thing", "object")
ORDINAL_WORDS: dict[int, tuple[str, ...]] = {2: ("second", "2nd"), 3: ("third", "3rd"), 4: ("fourth", "4th")}

# Axis directions: (attribute, sign); sorting by sign * value puts the extreme first.
AXES: dict[str, tuple[str, int]] = {"left": ("cx", 1), "right": ("cx", -1), "top": ("cy", 1), "bottom": ("cy", -1)}
RELATIONS = ("left", "right", "above", "below", "near")
CORNERS = ("top left", "top right", "bottom left", "bottom right")


@dataclass(frozen=True)
class SceneObject:
    """What the resolver knows of one object: its identity and where its *visible* mask lies."""

    category: str
    colour: str
    size: str  # "small" | "big": the size class it was drawn with
    scale: float  # nominal extent in pixels (longest side of the unoccluded object)
    cx: float  # centre of the visible mask's box
    cy: float
    photo: bool  # a real photo cut-out (True) or a geometric shape (False)


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    objects: tuple[SceneObject, ...]

    @property
    def margin(self) -> float:
        return MARGIN_SHARE * max(self.width, self.height)


@dataclass(frozen=True)
class Filter:
    """Attribute constraints; `None` leaves an attribute free (category None: any object)."""

    category: str | None = None
    colour: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.category is None or obj.category == self.category)
            and (self.colour is None or obj.colour == self.colour)
            and (self.size is None or obj.size == self.size)
        )


@dataclass(frozen=True)
class Query:
    """A referring expression before wording.

    kind: "plain" (the filter alone), "extreme" (direction in left/right/top/bottom), "ordinal" (rank-th
    from direction), "middle" (middle of an odd number along x), "corner" (direction is a corner name),
    "compare" (direction "bigger" or "smaller"), "relation" (direction in RELATIONS, to `landmark`).
    """

    filter: Filter
    kind: str = "plain"
    direction: str = ""
    rank: int = 0
    landmark: Filter | None = None


# --------------------------------------------------------------------------------------------- resolver
def _value(obj: SceneObject, direction: str) -> float:
    attr, sign = AXES[direction]
    return sign * getattr(obj, attr)


def _rank_reading(
    scene: Scene, cands: list[int], direction: str, rank: int, strict: bool
) -> list[int]:
    """Objects that are `rank`-th from `direction` among `cands` (1 = the extreme)."""
    m = scene.margin
    objs = scene.objects
    out = []
    for i in cands:
        vi = _value(objs[i], direction)
        before_sure = sum(1 for j in cands if j != i and _value(objs[j], direction) < vi - m)
        before_maybe = sum(1 for j in cands if j != i and _value(objs[j], direction) < vi + m)
        if strict:
            if before_sure == rank - 1 and before_maybe == rank - 1:
                out.append(i)
        elif before_sure <= rank - 1 <= before_maybe:
            out.append(i)
    return out


def _in_half(scene: Scene, obj: SceneObject, direction: str) -> bool:
    """Strictly inside the named side of the image (outer 40%): "the star on the left" with one star."""
    if direction in ("left", "right"):
        v = obj.cx / scene.width
    else:
        v = obj.cy / scene.height
    return v < 0.4 if direction in ("left", "top") else v > 0.6


def _corner_reading(scene: Scene, obj: SceneObject, corner: str, strict: bool) -> bool:
    vert, horiz = corner.split()
    fx, fy = obj.cx / scene.width, obj.cy / scene.height
    if horiz == "right":
        fx = 1.0 - fx
    if vert == "bottom":
        fy = 1.0 - fy
    limit = 0.4 if strict else 0.5 + MARGIN_SHARE
    return fx < limit and fy < limit


def _relation_holds(scene: Scene, obj: SceneObject, lm: SceneObject, relation: str, strict: bool) -> bool:
    m = scene.margin if strict else -scene.margin
    if relation == "left":
        return obj.cx < lm.cx - m
    if relation == "right":
        return obj.cx > lm.cx + m
    if relation == "above":
        return obj.cy < lm.cy - m
    if relation == "below":
        return obj.cy > lm.cy + m
    raise ValueError(f"not a directional relation: {relation}")


def _dist(a: SceneObject, b: SceneObject) -> float:
    return math.hypot(a.cx - b.cx, a.cy - b.cy)


def resolve(scene: Scene, query: Query, strict: bool = False) -> list[int]:
    """Indices of the objects `query` can denote: the loose reading, or the strict one if asked."""
    objs = scene.objects
    cands = [i for i, o in enumerate(objs) if query.filter.matches(o)]
    kind = query.kind
    if kind == "plain":
        return cands
    if kind == "extreme":
        out = _rank_reading(scene, cands, query.direction, 1, strict)
        if strict and len(cands) == 1:  # nothing to compare with: it must sit on that side of the image
            out = [i for i in out if _in_half(scene, objs[i], query.direction)]
        return out
    if kind == "ordinal":
        if strict and len(cands) <= query.rank:
            return []
        return _rank_reading(scene, cands, query.direction, query.rank, strict)
    if kind == "middle":
        if len(cands) < 3 or len(cands) % 2 == 0:
            return []
        return _rank_reading(scene, cands, "left", (len(cands) + 1) // 2, strict)
    if kind == "corner":
        return [i for i in cands if _corner_reading(scene, objs[i], query.direction, strict)]
    if kind == "compare":
        sign = 1.0 if query.direction == "bigger" else -1.0
        out = []
        for i in cands:
            si = objs[i].scale
            others = [objs[j].scale for j in cands if j != i]
            if strict:
                ok = bool(others) and all(
                    (si > SIZE_RATIO * s) if sign > 0 else (s > SIZE_RATIO * si) for s in others
                )
            else:  # nobody is clearly bigger (smaller) than it
                ok = not any((s > SIZE_RATIO * si) if sign > 0 else (si > SIZE_RATIO * s) for s in others)
            if ok:
                out.append(i)
        return out
    if kind == "relation":
        if query.landmark is None:
            raise ValueError("a relation query needs a landmark")
        landmarks = [k for k, o in enumerate(objs) if query.landmark.matches(o)]
        if strict and len(landmarks) != 1:
            return []
        out = set()
        for k in landmarks:
            lm = objs[k]
            rest = [i for i in cands if i != k]
            if query.direction == "near":
                dists = {i: _dist(objs[i], lm) for i in rest}
                reach = NEAR_RATIO * min(scene.width, scene.height) * 0.4
                for i in rest:
                    others = [dists[j] for j in rest if j != i]
                    if strict:
                        ok = dists[i] < reach and all(d > NEAR_RATIO * dists[i] for d in others)
                    else:
                        ok = not any(NEAR_RATIO * d < dists[i] for d in others)
                    if ok:
                        out.add(i)
            else:
                out.update(i for i in rest if _relation_holds(scene, objs[i], lm, query.direction, strict))
        return sorted(out)
    raise ValueError(f"unknown query kind: {kind}")


def refers_uniquely(scene: Scene, query: Query, target: int) -> bool:
    """True when every plausible reading of `query` denotes `target` and the strict reading holds for it."""
    return resolve(scene, query) == [target] and target in resolve(scene, query, strict=True)


# ----------------------------------------------------------------------------------- candidate queries
def _unique_filter(scene: Scene, index: int) -> Filter | None:
    """The shortest filter naming object `index` alone (used for relation landmarks)."""
    o = scene.objects[index]
    options = [
        Filter(o.category),
        Filter(o.category, colour=o.colour),
        Filter(o.category, size=o.size),
        Filter(o.category, colour=o.colour, size=o.size),
    ]
    for f in options:
        if sum(1 for x in scene.objects if f.matches(x)) == 1:
            return f
    return None


def candidate_queries(scene: Scene, target: int, rng: np.random.Generator) -> list[Query]:
    """Queries that might denote `target`, in a weighted random order (language-heavy kinds first)."""
    o = scene.objects[target]
    filters = [
        Filter(o.category),
        Filter(o.category, colour=o.colour),
        Filter(o.category, size=o.size),
        Filter(o.category, colour=o.colour, size=o.size),
        Filter(None, colour=o.colour),
        Filter(None, colour=o.colour, size=o.size),
    ]
    landmarks = [(k, _unique_filter(scene, k)) for k in range(len(scene.objects)) if k != target]
    landmarks = [(k, f) for k, f in landmarks if f is not None]
    weighted: list[tuple[Query, float]] = []
    for f in filters:
        members = [x for x in scene.objects if f.matches(x)]
        n = len(members)
        base = 0.4 if f.category is None else 1.0
        weighted.append((Query(f), 0.4 * base))
        if n >= 2:
            for d in AXES:
                weighted.append((Query(f, "extreme", d), 0.5 * base))
            for d in AXES:
                rank = 1 + sum(1 for x in members if _value(x, d) < _value(o, d))
                if 2 <= rank <= 4:
                    weighted.append((Query(f, "ordinal", d, rank=rank), 0.7 * base))
            if f.size is None:
                weighted.append((Query(f, "compare", "bigger"), 0.6 * base))
                weighted.append((Query(f, "compare", "smaller"), 0.6 * base))
        if n >= 3 and n % 2 == 1:
            weighted.append((Query(f, "middle"), 0.8 * base))
        for c in CORNERS:
            weighted.append((Query(f, "corner", c), 0.15 * base))
        if f.size is None and f.category is not None:
            for _k, lf in landmarks:
                for r in RELATIONS:
                    weighted.append((Query(f, "relation", r, landmark=lf), 2.0 / max(1, len(landmarks))))
    # Efraimidis-Spirakis: sorting by u^(1/w) draws a weighted order without replacement.
    keys = rng.random(len(weighted)) ** (1.0 / np.array([w for _q, w in weighted]))
    order = np.argsort(-keys, kind="stable")
    return [weighted[i][0] for i in order]


def expressions_for(scene: Scene, target: int, count: int, rng: np.random.Generator) -> list[Query]:
    """Up to `count` distinct unique queries for `target`, of different kinds where possible."""
    chosen: list[Query] = []
    spare: list[Query] = []
    kinds: set[str] = set()
    for q in candidate_queries(scene, target, rng):
        if not refers_uniquely(scene, q, target):
            continue
        if q.kind in kinds:
            spare.append(q)
        else:
            chosen.append(q)
            kinds.add(q.kind)
        if len(chosen) >= count:
            break
    return (chosen + spare)[:count]


# ------------------------------------------------------------------------------------------- wording
def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(f: Filter, rng: np.random.Generator) -> tuple[str, bool]:
    """"big red star" (with synonyms); returns the phrase and whether its noun is plural."""
    noun = _pick(rng, NOUNS[f.category]) if f.category else _pick(rng, GENERIC_NOUNS)
    words = []
    if f.size:
        words.append(_pick(rng, SIZE_WORDS[f.size]))
    if f.colour:
        words.append(_pick(rng, COLOUR_WORDS[f.colour]))
    return " ".join(words + [noun]), noun in PLURAL_NOUNS


def _np_variants(f: Filter, rng: np.random.Generator) -> str:
    """A noun phrase, sometimes with the colour moved after the noun ("the star that is red")."""
    if f.colour and f.category and rng.random() < 0.25:
        base, plural = _noun_phrase(replace(f, colour=None), rng)
        colour = _pick(rng, COLOUR_WORDS[f.colour])
        return _pick(rng, (f"{base} that {'are' if plural else 'is'} {colour}", f"{base} in {colour}"))
    return _noun_phrase(f, rng)[0]


def _the(rng: np.random.Generator) -> str:
    return "the " if rng.random() < 0.6 else ""


def word(query: Query, scene: Scene, rng: np.random.Generator) -> str:
    """One wording of `query` (lower case; a comma at most); the scene decides "bigger" vs "biggest"."""
    f, d = query.filter, query.direction
    np_ = _np_variants(f, rng)
    the = _the(rng)
    if query.kind == "plain":
        return f"{the}{np_}"
    if query.kind == "extreme":
        if d in ("left", "right"):
            forms = (f"{the}{np_} on the {d}", f"{the}{d} {np_}", f"{the}{d}most {np_}",
                     f"{the}{np_} furthest to the {d}", f"{d}most {np_}")
        elif d == "top":
            forms = (f"{the}{np_} at the top", f"{the}top {np_}", f"{the}topmost {np_}",
                     f"{the}highest {np_}", f"{the}uppermost {np_}")
        else:
            forms = (f"{the}{np_} at the bottom", f"{the}bottom {np_}", f"{the}lowest {np_}",
                     f"{the}bottommost {np_}", f"{np_} at the bottom")
        return _pick(rng, forms)
    if query.kind == "ordinal":
        ordw = _pick(rng, ORDINAL_WORDS[query.rank])
        side = {"left": "the left", "right": "the right", "top": "the top", "bottom": "the bottom"}[d]
        return _pick(rng, (f"{the}{ordw} {np_} from {side}", f"{the}{np_} {ordw} from {side}",
                           f"{ordw} from {side} {np_}", f"{the}{ordw} {np_} counting from {side}"))
    if query.kind == "middle":
        return _pick(rng, (f"{the}middle {np_}", f"{the}{np_} in the middle", f"{the}center {np_}",
                           f"{np_} in the middle"))
    if query.kind == "corner":
        vert, horiz = d.split()
        upper = {"top": "upper", "bottom": "lower"}[vert]
        return _pick(rng, (f"{the}{np_} in the {vert} {horiz} corner", f"{the}{vert} {horiz} {np_}",
                           f"{the}{np_} {vert} {horiz}", f"{the}{np_} in the {upper} {horiz}",
                           f"{vert} {horiz} corner {np_}"))
    if query.kind == "compare":
        big = d == "bigger"
        if sum(1 for o in scene.objects if f.matches(o)) == 2:
            cmp = _pick(rng, ("bigger", "larger") if big else ("smaller",))
        else:
            cmp = _pick(rng, ("biggest", "largest") if big else ("smallest", "tiniest"))
        return _pick(rng, (f"{the}{cmp} {np_}", f"{cmp} {np_}"))
    if query.kind == "relation":
        lm = "the " + _noun_phrase(query.landmark, rng)[0]  # type: ignore[arg-type]
        rel = {
            "left": ("left of", "to the left of", "on the left of"),
            "right": ("right of", "to the right of", "on the right of"),
            "above": ("above", "over", "higher than"),
            "below": ("below", "under", "beneath"),
            "near": ("next to", "near", "beside", "closest to"),
        }[d]
        r = _pick(rng, rel)
        if rng.random() < 0.25:  # landmark first, as annotators often type it
            return f"{r} {lm}, {the}{_noun_phrase(f, rng)[0]}"
        return f"{the}{np_} {r} {lm}"
    raise ValueError(f"unknown query kind: {query.kind}")
