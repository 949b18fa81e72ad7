"""What a reader sees in a figure: its texts, and whether any of them collide."""

from matplotlib.legend import Legend

from kto_lab.plotting import point_labels


def _figures(fig):
    yield fig
    for sub in fig.subfigs:
        yield from _figures(sub)


def legend_texts(fig):
    return [t.get_text() for leg in fig.findobj(Legend) for t in leg.get_texts()]


def _tick_labels(axis):
    """The labels of the ticks inside the axis' view (the others are not drawn)."""
    lo, hi = sorted(axis.get_view_interval())
    span = (hi - lo) * 1e-9
    return [t for loc, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels()) if lo - span <= loc <= hi + span]


def drawn_texts(fig):
    """Every non-empty text drawn on ``fig``: (sub)figure titles, axes titles, axis and tick labels of
    the axes that are on, legend entries and titles."""
    fig.draw_without_rendering()
    texts = [f._suptitle for f in _figures(fig) if f._suptitle is not None]
    for ax in fig.get_axes():
        texts.append(ax.title)
        if ax.axison:
            texts += [ax.xaxis.label, ax.yaxis.label, *_tick_labels(ax.xaxis), *_tick_labels(ax.yaxis)]
    for leg in fig.findobj(Legend):
        texts += [leg.get_title(), *leg.get_texts()]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def overlapping_texts(fig):
    """Pairs of drawn texts whose boxes overlap: labels that collide."""
    boxes = [(t.get_text(), t.get_window_extent()) for t in drawn_texts(fig)]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]


def colliding_point_labels(fig):
    """Pairs of point labels (``ax.annotate`` texts) whose boxes overlap each other or a legend, as drawn."""
    fig.draw_without_rendering()
    out = []
    for ax in fig.get_axes():
        boxes = [(t.get_text(), t.get_window_extent()) for t in point_labels(ax)]
        legend = ax.get_legend()
        out += [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]
        if legend is not None:
            out += [(a, "legend") for a, box in boxes if box.overlaps(legend.get_window_extent())]
    return out
