"""Time to first answer: each measured cell's artifact deployed in a fresh Python process (--cnn-cold-start).

A sub-plugin (``plugin.py``) behind the ``pytest_cnnbench_cell_measured`` hook: the core calls it once
per measured cell; it acts only when ``--cnn-cold-start`` is given. ``run.py`` starts the children
(``child.py``), each a fresh interpreter that loads the artifact as a deployed service would, with the
runtime's own cache cold, then warm (``loaders.py``: one loader per runtime); ``table.py`` formats the
summary. Importing this package is cheap: no torch, no runtime.
"""

from __future__ import annotations

KINDS = ("cold", "warm")
NO_ARTIFACT = "no deployable artifact"
# Written by the child on its last line of stdout, before the JSON of its stages.
RESULT_MARKER = "CNNBENCH-COLDSTART-RESULT "
