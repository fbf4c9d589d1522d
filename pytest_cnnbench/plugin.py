"""pytest-cnnbench's pytest plugin: options, hooks and fixtures. The work lives in other modules.

Importing this module must stay cheap: no torch, ONNX Runtime or TensorRT here.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from . import registry
from .core import CellSpec
from .options import Settings, add_options, parse_settings
from .session import CnnBenchSession

SETTINGS_KEY = pytest.StashKey[Settings]()
SESSION_KEY = pytest.StashKey[CnnBenchSession]()
WORKBENCH_KEY = pytest.StashKey[Any]()
CELL_FIXTURES = ("cnn_cell", "cnn_model", "cnn_dataset", "cnn_backend", "cnnbench")
NO_CELLS = "no-cells"  # parameter of tests whose cells the options filter out; deselected


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cnnbench(models=None, backends=None, dataset=None, batch_sizes=None): restrict the cells a "
        "benchmark test runs (the command-line options narrow them further)",
    )
    if config.option.help:
        return
    settings = parse_settings(config)
    config.stash[SETTINGS_KEY] = settings
    workers = getattr(config.option, "numprocesses", None)
    if workers and not hasattr(config, "workerinput") and settings.device != "cuda":
        config.issue_config_time_warning(
            pytest.PytestWarning(
                f"cnnbench: timing under pytest-xdist (-n {workers}) on the CPU is distorted: the workers compete "
                "for the same cores, so latencies are inflated and noisy. Use -n 0 for figures you report; "
                "with several GPUs, pin one worker per GPU (see README)."
            ),
            stacklevel=2,
        )
    session = CnnBenchSession(config, settings)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "cnnbench-session")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        config.pluginmanager.unregister(session)
        del config.stash[SESSION_KEY]


# -- default hook implementations (override them from a conftest.py) -------------------
@pytest.hookimpl(trylast=True)
def pytest_cnnbench_environment(config: pytest.Config, results: list[dict[str, Any]]) -> dict[str, Any]:
    from .environment import collect

    session = config.stash[SESSION_KEY]
    return collect(results, config.rootpath, session.options())


@pytest.hookimpl(trylast=True)
def pytest_cnnbench_format_table(config: pytest.Config, results: list[dict[str, Any]]) -> str:
    from .table import format_table

    return format_table(results, changes=config.stash[SESSION_KEY].table_changes(results))


# -- parametrization --------------------------------------------------------------------
def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    return (value,) if isinstance(value, (str, int)) else tuple(value)


def cells_for(settings: Settings, marker: dict[str, Any]) -> list[CellSpec]:
    """The cells one test runs: registries x options, narrowed by its cnnbench marker."""
    for kind, names in (("model", marker.get("models")), ("backend", marker.get("backends"))):
        reg = registry.models if kind == "model" else registry.backends
        for name in _as_tuple(names):
            reg.get(name)  # unknown names in a marker are errors too
    models = [m for m in settings.models if not marker.get("models") or m in _as_tuple(marker["models"])]
    backends = [b for b in settings.backends if not marker.get("backends") or b in _as_tuple(marker["backends"])]
    batch_sizes = _as_tuple(marker.get("batch_sizes")) or settings.batch_sizes
    cells = []
    for model, precision, batch_size, backend in itertools.product(models, settings.precisions, batch_sizes, backends):
        dataset = settings.dataset or marker.get("dataset") or registry.models.get(model).meta["dataset"]
        cells.append(CellSpec(model, backend, int(batch_size), dataset, settings.device, precision))
    return cells


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not any(name in metafunc.fixturenames for name in CELL_FIXTURES):
        return
    settings = metafunc.config.stash[SETTINGS_KEY]
    marker: dict[str, Any] = {}
    for mark in reversed(list(metafunc.definition.iter_markers("cnnbench"))):  # closest mark wins
        marker.update(mark.kwargs)
    try:
        cells = cells_for(settings, marker)
    except registry.UnknownNameError as exc:
        # A collection error shows just this message and stops the run before anything is built.
        raise pytest.Collector.CollectError(f"{metafunc.definition.nodeid}: @pytest.mark.cnnbench: {exc}") from None
    if cells:
        metafunc.parametrize("cnn_cell", cells, ids=[c.id for c in cells])
    else:
        metafunc.parametrize("cnn_cell", [NO_CELLS], ids=[NO_CELLS])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        (dropped if callspec is not None and callspec.params.get("cnn_cell") == NO_CELLS else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture
def cnn_cell(request: pytest.FixtureRequest) -> CellSpec:
    """The cell under test (model, backend, batch size, dataset, device, precision)."""
    return request.param


def _workbench(config: pytest.Config) -> Any:
    bench = config.stash.get(WORKBENCH_KEY, None)
    if bench is None:
        from .bench import Workbench

        reporter = config.pluginmanager.get_plugin("terminalreporter")

        def log(message: str) -> None:
            if reporter is not None:
                reporter.write_line(message)

        bench = config.stash[WORKBENCH_KEY] = Workbench(config.stash[SETTINGS_KEY], log)
    return bench


@pytest.fixture
def cnnbench(cnn_cell: CellSpec, request: pytest.FixtureRequest) -> Any:
    """Measures the cell: ``cnnbench.run()`` returns its result; ``check_accuracy``/``check_agreement`` assert."""
    from . import results as R

    # Identity first, so a skip or an error in any later step still lands in the table.
    identity = {**cnn_cell.as_dict(), "test": request.node.nodeid}
    request.node.user_properties.append((R.CELL_PROPERTY, identity))
    from .bench import CellRunner

    return CellRunner(cnn_cell, _workbench(request.config), request, identity)


@pytest.fixture
def cnn_backend(cnnbench: Any) -> Any:
    """The backend object under test (skips when it cannot run here)."""
    return cnnbench.backend


@pytest.fixture
def cnn_model(cnnbench: Any) -> Any:
    """The built model under test (a ``BuiltModel``: module, preprocessing, weights provenance)."""
    return cnnbench.bench.model(cnnbench.spec)[0]


@pytest.fixture
def cnn_dataset(cnnbench: Any, cnn_model: Any) -> Any:
    """``(dataset, images, labels)`` for the cell, preprocessed for its model."""
    return cnnbench.bench.dataset(cnnbench.spec, cnn_model)
