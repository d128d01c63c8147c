"""The report's value labels of off-chart points never print on top of each other."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest

from rpusim.report import _cap, _overlap, place_labels


def _boxes(anchors, sizes, places):
    return [
        (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        for (w, h), p in zip(sizes, places, strict=True)
        if p is not None
        for x, y in [p]
    ]


def _no_two_overlap(boxes):
    return not any(_overlap(a, b) for a, b in itertools.combinations(boxes, 2))


def test_lone_labels_hang_centred_under_their_points():
    anchors = [(100.0, 300.0), (200.0, 300.0)]
    sizes = [(20.0, 10.0), (20.0, 10.0)]
    assert place_labels(anchors, sizes, gap=4.0) == [(100.0, 291.0), (200.0, 291.0)]


def test_crowded_labels_move_down_a_row_and_are_left_out_when_no_row_is_free():
    # Five points 4 px apart, labels 20 px wide: each overlaps all the others' first row.
    anchors = [(100.0 + 4 * i, 300.0) for i in range(5)]
    sizes = [(20.0, 10.0)] * 5
    places = place_labels(anchors, sizes, gap=2.0, rows=3)
    assert [p is None for p in places] == [False, False, False, True, True]
    assert [p[1] for p in places[:3]] == [293.0, 281.0, 269.0]  # one row (10 + 2) each
    assert _no_two_overlap(_boxes(anchors, sizes, places))


def test_the_asymmetry_figures_three_labels_no_longer_collide():
    """The old final_up_down.png: a mean and the seeds' max above the chart at 2, 5 and 10 %."""
    anchors = [(211.0, 430.0), (211.0, 430.0), (376.0, 430.0), (376.0, 430.0), (650.0, 430.0)]
    sizes = [(22.0, 12.0)] * 5
    places = place_labels(anchors, sizes, gap=10.0)
    assert all(p is not None for p in places)
    assert _no_two_overlap(_boxes(anchors, sizes, places))


@pytest.mark.parametrize("seed", range(20))
def test_random_points_never_give_overlapping_labels(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    anchors = [(rng.uniform(0, 300), rng.choice([400.0, rng.uniform(0, 400)])) for _ in range(n)]
    sizes = [(rng.uniform(5, 40), rng.uniform(5, 15)) for _ in range(n)]
    places = place_labels(anchors, sizes, gap=rng.uniform(0, 5), rows=rng.randint(1, 5))
    assert len(places) == n
    assert _no_two_overlap(_boxes(anchors, sizes, places))
    for (x, _), p in zip(anchors, places, strict=True):
        assert p is None or p[0] == x  # centred under its point, never sideways


def test_cap_draws_one_label_per_point_not_per_error_bar_cap():
    """On a real figure: the seeds' max (an error bar's cap) gets no label of its own, and the
    labels drawn do not overlap on the canvas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = [0, 0.5, 1, 2, 5, 10]
    ys = [2.17, 2.18, 2.52, 9.36, 5.91, 5.76]
    ax.errorbar(xs, ys, yerr=[[0.0] * 6, [0.0, 0.0, 0.3, 6.1, 1.3, 1.1]], fmt="o-", capsize=3)
    ax.errorbar([2, 2.1, 5], [8.0, 7.0, 6.0], fmt="s-")  # a second line crowding the first
    labels = _cap(ax, SimpleNamespace(uniform=4.47, vocab_size=87))
    texts = [label.get_text() for label in labels]
    assert "15.5" not in texts and "7.2" not in texts  # the seeds' maxima: caps, not points
    assert texts[:3] == ["9.4", "5.9", "5.8"]
    renderer = fig.canvas.get_renderer()
    boxes = [tuple(label.get_window_extent(renderer).extents) for label in labels]
    assert _no_two_overlap(boxes)
    plt.close(fig)
