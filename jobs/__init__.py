"""The hirl orchestrator: experiment spec → stage DAG → MLflow lineage → backend.

Never imports torch (or numpy, faiss...): the CLI must answer in well under a
second. MLflow is imported lazily, by the commands that track runs.
"""

from .dag import Cell, Stage, assign_outputs, compile_cell, format_plan
from .spec import Experiment, SpecError, StageSpec, load_experiment

__all__ = ["Cell", "Experiment", "SpecError", "Stage", "StageSpec", "assign_outputs", "compile_cell",
           "format_plan", "load_experiment"]
