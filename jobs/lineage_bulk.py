"""Creating the runs of many cells at once (a sweep's submission).

Against a tracking server each MLflow call is a round trip the server mostly waits on, so the cells'
chains are created from a pool of threads; their runs are independent, and the experiment is made once,
before the pool starts, so no two threads race to create it. A sqlite store takes one writer at a time:
there threads would only queue on its lock, and the cells go one after the other.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from . import lineage

WORKERS = 8


def parallel(uri):
    return uri.startswith(("http://", "https://"))


def ensure_chains(cells, backend, force=False, uri=None, sweep=None, workers=None):
    """``[lineage.ensure_chain(cell, ...) for cell in cells]``, in the cells' order."""
    uri = uri or lineage.tracking_uri()
    cells = list(cells)
    if len(cells) < 2 or not parallel(uri):
        return [lineage.ensure_chain(cell, backend, force=force, uri=uri, sweep=sweep) for cell in cells]
    c = lineage.client(uri)
    for name in dict.fromkeys(cell.experiment for cell in cells):
        lineage._experiment_id(c, name, create=True)
    size = workers or int(os.environ.get("HIRL_LINEAGE_WORKERS") or WORKERS)
    with ThreadPoolExecutor(max_workers=max(1, size)) as pool:
        return list(pool.map(lambda cell: lineage.ensure_chain(cell, backend, force=force, uri=uri, sweep=sweep),
                             cells))
