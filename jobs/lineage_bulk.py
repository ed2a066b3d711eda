"""Creating the runs of many cells at once (a sweep's submission).

The new chains of a sweep are written in one transaction (lineage_sql): the client's own store's when the
tracking URI is a database (sqlite, PostgreSQL), the server's through one request when the server has
hirl's endpoint (tracking/up.sh starts it so). Cells that have a chain already go through ensure_chain,
which decides what to reuse. Against a server without the endpoint each chain is a dozen round trips
the server mostly waits on, so chains are created from a pool of threads; their runs are independent,
and the experiment is made once, before the pool starts, so no two threads race to create it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from . import lineage, lineage_reuse, lineage_sql

WORKERS = 8


def parallel(uri):
    return uri.startswith(("http://", "https://"))


def ensure_chains(cells, backend, force=False, uri=None, sweep=None, workers=None):
    """``[lineage.ensure_chain(cell, ...) for cell in cells]``, in the cells' order."""
    uri = uri or lineage.tracking_uri()
    cells = list(cells)
    if len(cells) < 2:
        return [lineage.ensure_chain(cell, backend, force=force, uri=uri, sweep=sweep) for cell in cells]
    store = lineage_sql.sql_store(uri)
    if store is not None or parallel(uri):
        made = _in_one_transaction(store, cells, backend, uri, sweep)
        if made is not None:
            return [made[id(cell)] if id(cell) in made else
                    lineage.ensure_chain(cell, backend, force=force, uri=uri, sweep=sweep) for cell in cells]
    if not parallel(uri):
        return [lineage.ensure_chain(cell, backend, force=force, uri=uri, sweep=sweep) for cell in cells]
    c = lineage.client(uri)
    for name in dict.fromkeys(cell.experiment for cell in cells):
        lineage.experiment_id_of(c, name, create=True)
    size = workers or int(os.environ.get("HIRL_LINEAGE_WORKERS") or WORKERS)
    with ThreadPoolExecutor(max_workers=max(1, size)) as pool:
        return list(pool.map(lambda cell: lineage.ensure_chain(cell, backend, force=force, uri=uri, sweep=sweep),
                             cells))


def _in_one_transaction(store, cells, backend, uri, sweep):
    """{id(cell): {stage: StageRun}} of the cells that had no chain, created at once per experiment; None
    when the server has no endpoint for it (then nothing was created)."""
    c = lineage.client(uri)
    made = {}
    for name in dict.fromkeys(cell.experiment for cell in cells):
        exp_id = lineage.experiment_id_of(c, name, create=True)
        group = [cell for cell in cells if cell.experiment == name]
        if store is not None:
            have = lineage_sql.cells_with_chains(store, exp_id, {cell.cell_id for cell in group})
        else:
            chains = lineage.search_all(c, exp_id, "tags.`hirl.kind` = 'chain'")
            have = {run.data.tags.get("hirl.cell") for run in chains}
        new = [cell for cell in group if cell.cell_id not in have]
        if new:  # a new cell with a finished twin of a root stage goes through ensure_chain, which reuses it
            finished = lineage_reuse.finished_hashes(c, exp_id)
            new = [cell for cell in new if not lineage_reuse.may_reuse(cell, finished)]
        runs = lineage_sql.create_chains(uri, new, backend, exp_id, sweep, store)
        if runs is None:
            return None
        made.update(zip(map(id, new), runs))
    return made
