"""Counters around the AID / PAID interpolation patches, for host tests and the benchmark.

The product patch (``nodes/aid_attention.py``) keeps no statistics. :func:`interpolation_stats`
wraps that module's ``make_interpolation_patch`` and ``interpolated_attention`` for the duration
of a ``with`` block and records, for every sampling chunk (one ``ChunkPlan``, in order):

* ``calls``: how often a patch gave a conditional chunk interpolated attention (once per layer
  call and conditional chunk, during the warm-up only);
* ``max_rows``: the largest UNet batch the patches saw.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any


@dataclass
class ChunkStats:
    plan: Any           # the ChunkPlan of the sampling chunk
    calls: int = 0      # attention calls that interpolated
    max_rows: int = 0   # largest UNet batch seen


@contextlib.contextmanager
def interpolation_stats(interp):
    """Count what the interpolation patches do inside the block.

    ``interp`` is the pack's ``nodes.aid_attention`` module (the interpolation patches). Yields a list that fills with one
    :class:`ChunkStats` per ``ChunkPlan`` that patches are made for, in order of creation.
    """
    stats: list[ChunkStats] = []
    running: list[ChunkStats] = []  # the patch calls in progress, innermost last
    make_patch, attend = interp.make_interpolation_patch, interp.interpolated_attention

    def entry_for(plan) -> ChunkStats:
        for entry in stats:
            if entry.plan is plan:
                return entry
        stats.append(ChunkStats(plan))
        return stats[-1]

    def counting_patch(plan, previous=None):
        entry, patch = entry_for(plan), make_patch(plan, previous)

        def storm_aid_attention(q, k, v, extra_options):
            entry.max_rows = max(entry.max_rows, q.shape[0])
            running.append(entry)
            try:
                return patch(q, k, v, extra_options)
            finally:
                running.pop()

        return storm_aid_attention

    def counting_attention(*args, **kwargs):
        if running:
            running[-1].calls += 1
        return attend(*args, **kwargs)

    interp.make_interpolation_patch, interp.interpolated_attention = counting_patch, counting_attention
    try:
        yield stats
    finally:
        interp.make_interpolation_patch, interp.interpolated_attention = make_patch, attend
