"""Pictures and reports: the width-group graph of a model, and the plots and HTML report of a run.

``graph`` draws a live :class:`~archgrow.WidthGraph`; ``plots`` and ``report`` read only a run or
sweep directory's files (``docs/run-directory.md``), so finished runs can be redrawn anywhere.
matplotlib (``pip install 'archgrow[viz]'``) is imported only when a picture is drawn.
"""

from archgrow.viz.graph import dot_source, layer_graph, render_width_graph
from archgrow.viz.plots import (
    plot_accuracy_vs_params,
    plot_run,
    plot_sweep,
    plot_training,
    plot_triggers,
    plot_widths,
    width_series,
)
from archgrow.viz.report import write_run_report, write_sweep_report

__all__ = [
    "dot_source",
    "layer_graph",
    "plot_accuracy_vs_params",
    "plot_run",
    "plot_sweep",
    "plot_training",
    "plot_triggers",
    "plot_widths",
    "render_width_graph",
    "width_series",
    "write_run_report",
    "write_sweep_report",
]
