"""Measuring one cell, step by step (``pipeline.measure`` reads top to bottom).

inputs -> reference -> prepare (threads, scaling) -> accuracy -> latency -> memory -> sub-plugins
(``pytest_cnnbench_cell_measured``) -> publish. Each step is a module named for it and returns a
typed record; ``context.CellContext`` is what they all read. The ``cnnbench`` fixture over them is
``runner.CellRunner``. Nothing here is imported before a cell runs, so torch stays out of collection.
"""
