"""hirl_core: the HIRL reimplementation's library (config, data, models, methods, engine, evals).

This file imports nothing on purpose: the job orchestrator imports ``hirl_core.config``
and must not pay for torch just to read a config.
"""

__version__ = "0.1.0"
