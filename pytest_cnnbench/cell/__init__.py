"""Measuring one cell, step by step (``pipeline.measure`` reads top to bottom).

inputs -> reference -> prepare (threads, scaling) -> accuracy -> latency -> memory -> sub-plugins
(``pytest_cnnbench_cell_measured``) -> publish. Each step is a module named for it: it reads
``context.CellContext`` (the cell, read-only) and the records of earlier steps, writes its figures into
the row (``results.CellResult``) and returns what later steps need as a typed record (``Inputs``,
``ReferenceCompanion``, ``AccuracyFigures``, ``Latency``; preparing returns the backend's ``Prepared``).
The ``cnnbench`` fixture over them is ``runner.CellRunner``. Nothing here is imported before a cell
runs (but ``reference_rule``, outside this package), so torch stays out of collection.
"""
