"""The categories of the synthetic shapes set: their names, the base/novel split, which may appear.

A category is a (shape, colour, texture) combination named "<colour> <texture> <shape>", ids
``1..C`` shape-major. The held-out ("novel") combinations are chosen so that every shape, colour
and texture keeps a base category: novel categories are unseen pairings of seen attribute values,
which is what base -> novel generalisation should measure.

This lives apart from :mod:`workbench.data.synthetic` because that module imports it (its config
validates category names when it is built); functions take its
:class:`~workbench.data.synthetic.ShapesConfig` as ``cfg``, imported for type checking only.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import math
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # synthetic.py imports this module; the type needs no import at run time
    from workbench.data.synthetic import ShapesConfig


def _check_names(names: tuple[str, ...], known: list[str], field: str) -> None:
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.0)
            raise ValueError(
                f"ShapesConfig.{field}: unknown category {name!r}; did you mean {close[0]!r}? "
                "Names read '<colour> <texture> <shape>', e.g. 'red striped star'."
            )


def _split(combos: list[tuple[str, str, str]], cfg: ShapesConfig) -> set[tuple[str, str, str]]:
    """The held-out (shape, colour, texture) combinations; see ShapesConfig.novel."""
    n_novel = round(cfg.novel_fraction * len(combos))
    n_values = [len({c[a] for c in combos}) for a in range(3)]
    # A value with m combinations may lose at most m - 1 (one must stay base), and no value is
    # held out more than its even share, rounded up: novel = unseen pairings of seen values.
    caps = [min(math.ceil(n_novel / n), len(combos) // n - 1) for n in n_values]
    rng = np.random.default_rng(cfg.split_seed)
    for _ in range(500):  # randomised greedy; the default product succeeds at once
        counts: Counter = Counter()
        novel = set()
        for i in rng.permutation(len(combos)):
            combo = combos[i]
            if len(novel) < n_novel and all(counts[a, combo[a]] < caps[a] for a in range(3)):
                novel.add(combo)
                counts.update((a, combo[a]) for a in range(3))
        if len(novel) == n_novel:
            return novel
    raise ValueError(
        f"ShapesConfig.novel_fraction={cfg.novel_fraction} cannot hold out {n_novel} of "
        f"{len(combos)} categories while every shape, colour and texture keeps a base category"
    )


# Cached: every image's layout asks for the allowed set, and the frozen config is hashable.
@functools.lru_cache(maxsize=32)
def resolve_categories(cfg: ShapesConfig) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """(all category records, the records allowed to appear)."""
    combos = list(itertools.product(cfg.shapes, cfg.colours, cfg.textures))
    names = [f"{c} {t} {s}" for s, c, t in combos]
    if cfg.novel is not None:
        _check_names(cfg.novel, names, "novel")
        novel = set(cfg.novel)
    else:
        novel = {f"{c} {t} {s}" for s, c, t in _split(combos, cfg)}
    keys = ("id", "name", "supercategory", "shape", "colour", "texture", "split")
    rows = [
        (i + 1, n, "shape", *combo, "novel" if n in novel else "base")
        for i, (n, combo) in enumerate(zip(names, combos, strict=True))
    ]
    records = tuple(dict(zip(keys, row, strict=True)) for row in rows)
    if isinstance(cfg.categories, tuple):
        _check_names(cfg.categories, names, "categories")
        allowed = tuple(r for r in records if r["name"] in cfg.categories)
    elif cfg.categories in ("all", "base", "novel"):
        allowed = tuple(r for r in records if cfg.categories in ("all", r["split"]))
    else:
        raise ValueError(
            f"ShapesConfig.categories={cfg.categories!r}: use 'all', 'base', "
            "'novel' or a tuple of category names"
        )
    if len(allowed) < cfg.categories_per_image[0]:
        raise ValueError(
            f"ShapesConfig.categories={cfg.categories!r} allows {len(allowed)} categories but "
            f"categories_per_image asks for at least {cfg.categories_per_image[0]}"
        )
    return records, allowed
