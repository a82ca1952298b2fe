"""Experiments: an experiment file in, trained (grown) models, tables, pictures and a report out.

Kept apart from the library (torchtune's recipes vs components): nothing in ``archgrow`` imports
the runner; it only uses the public ``wrap``/``grow_step`` path that users' own loops use.
"""

from archgrow.runner.experiment import Experiment, ExperimentError, load_experiment, parse_experiment
from archgrow.runner.sweep import SweepResult, aggregate, markdown_table, run_experiment

__all__ = [
    "Experiment",
    "ExperimentError",
    "SweepResult",
    "aggregate",
    "load_experiment",
    "markdown_table",
    "parse_experiment",
    "run_experiment",
]
