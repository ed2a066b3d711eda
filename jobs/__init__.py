"""The hirl orchestrator: experiment spec → sweep cells → stage DAG → MLflow lineage → backend.

Never imports torch (or numpy, faiss...): the CLI must answer in well under a
second. MLflow is imported lazily, by the commands that track runs; matplotlib
only by ``hirl report``.
"""

from .dag import Cell, Stage, assign_outputs, compile_cell, format_plan
from .matrix import Sweep, format_sweep_plan, load_sweep
from .spec import Experiment, SpecError, StageSpec, load_experiment

__all__ = ["Cell", "Experiment", "SpecError", "Stage", "StageSpec", "Sweep", "assign_outputs", "compile_cell",
           "format_plan", "format_sweep_plan", "load_experiment", "load_sweep"]
