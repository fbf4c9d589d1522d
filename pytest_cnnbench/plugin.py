"""pytest-cnnbench's pytest plugin: options, hooks and fixtures. The work lives in other modules.

Importing this module must stay cheap: no torch, ONNX Runtime or TensorRT here.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Optional, Sequence

import pytest

from . import models, options, progress, registry
from .core import CellSpec, cnnbench_marker
from .datasets.errors import DatasetError
from .options import Settings, add_options, parse_settings
from .session import CnnBenchSession

SETTINGS_KEY = pytest.StashKey[Settings]()
JSON_UPDATER_KEY = pytest.StashKey[Any]()
SESSION_KEY = pytest.StashKey[CnnBenchSession]()
PROCESS_CACHE_KEY = pytest.StashKey[Any]()
PROGRESS_MODE_KEY = pytest.StashKey[str]()  # --cnn-progress, validated
IDENTITY = pytest.StashKey[dict]()  # per item: the row identity recorded in user_properties
FIXTURE_MODEL_ID = pytest.StashKey[str]()  # per item: param id of a user's cnn_model fixture
NO_CELLS = "no-cells"  # parameter of tests whose cells the options filter out; deselected


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)
    for name, plugin in sub_plugins().items():
        pluginmanager.register(plugin, name)


def sub_plugins() -> dict[str, Any]:
    """The bundled sub-plugins by name: always registered, so their options parse; each acts when selected.
    pluggy calls the last registered first: LoadGen's scenarios run on a cell before its cold start."""
    from .coldstart import plugin as coldstart
    from .mlperf import plugin as loadgen

    return {"cnnbench-coldstart": coldstart, "cnnbench-loadgen": loadgen}


def report_sections(config: Optional[pytest.Config], results: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The ``(title, html)`` sections plugins add to the HTML page (``pytest_cnnbench_report_sections``).
    Without a pytest run (``config`` None: the report command line), the bundled sub-plugins answer alone."""
    if config is not None:
        found = config.hook.pytest_cnnbench_report_sections(config=config, results=list(results))
    else:  # in hook order: the last registered first
        found = [plugin.pytest_cnnbench_report_sections(config=None, results=list(results))
                 for plugin in reversed(list(sub_plugins().values()))
                 if hasattr(plugin, "pytest_cnnbench_report_sections")]
    return [section for sections in found for section in sections or ()]


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> Any:
    """A name registered twice by a rootdir conftest is a usage error with the registry's
    message (both registrations), not an import traceback through the registry."""
    try:
        return (yield)
    except Exception as exc:
        cause = getattr(exc, "cause", exc)  # pytest wraps it in a ConftestImportFailure
        if isinstance(cause, registry.RegistrationError):
            raise pytest.UsageError(str(cause)) from None
        raise


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cnnbench(models=None, backends=None, dataset=None, batch_sizes=None, input_shape=None, num_classes=None): "
        "restrict the cells a benchmark test runs (the command-line options narrow them further); input_shape and "
        "num_classes describe models from a cnn_model fixture",
    )
    config.addinivalue_line(
        "markers", "cnnbench_selfcheck: a check of the harness itself; runs only with --cnn-selfcheck, which runs only these")
    if config.option.help:
        return
    settings = parse_settings(config)
    config.stash[SETTINGS_KEY] = settings
    from . import worklock

    worklock.wait_limit_s = settings.lock_timeout
    config.stash[PROGRESS_MODE_KEY] = _progress_mode(config)
    session = CnnBenchSession(config, settings)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "cnnbench-session")
    config.pluginmanager.register(UpdateHooks(), "cnnbench-update-hooks")
    if config.pluginmanager.hasplugin("html"):  # pytest-html is loaded: its hooks exist (optional extra)
        from .pytesthtml import PytestHtmlExtras

        config.pluginmanager.register(PytestHtmlExtras(session), "cnnbench-pytest-html")
    from . import results

    def update_json(document: dict[str, Any]) -> None:
        config.hook.pytest_cnnbench_update_json(config=config, document=document)

    results.document_updaters.append(update_json)
    config.stash[JSON_UPDATER_KEY] = update_json


def pytest_unconfigure(config: pytest.Config) -> None:
    progress.install(None)
    update_json = config.stash.get(JSON_UPDATER_KEY, None)
    if update_json is not None:
        from . import results

        results.document_updaters.remove(update_json)
        del config.stash[JSON_UPDATER_KEY]
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        config.pluginmanager.unregister(session)
        extras = config.pluginmanager.get_plugin("cnnbench-pytest-html")
        if extras is not None:
            config.pluginmanager.unregister(extras)
        del config.stash[SESSION_KEY]


# -- progress of the long phases (progress.py) ---------------------------------------
def _progress_mode(config: pytest.Config) -> str:
    from .options import _choice, _raw

    return _choice(_raw(config, "cnn-progress"), "cnn-progress", progress.MODES)


def _progress_display(config: pytest.Config) -> Any:
    """The display --cnn-progress asks for, or None: none under -q (unless asked for by name),
    on xdist workers (the controller shows their reports, not their terminals) or without a terminal reporter."""
    mode = config.stash.get(PROGRESS_MODE_KEY, "off")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if mode == "off" or reporter is None or hasattr(config, "workerinput") or os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    if mode == "auto":
        if config.get_verbosity() < 0:
            return None
        mode = "live" if reporter.isatty() else "plain"
    display = progress.LiveDisplay if mode == "live" else progress.PlainDisplay
    return display(reporter, config.pluginmanager.get_plugin("capturemanager"))


def pytest_sessionstart(session: pytest.Session) -> None:
    # Here, not in pytest_configure: the terminal reporter is registered by then.
    progress.install(_progress_display(session.config))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "cnn_cell" in getattr(item, "fixturenames", ()):
        callspec = getattr(item, "callspec", None)
        progress.start_cell(callspec.id if callspec is not None else item.name)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Before the terminal reporter writes its letter or word: complete the live line first.
    # A passed setup writes nothing, and the cell goes on into its call.
    if report.when == "setup" and report.passed:
        return
    progress.end_cell()


def pytest_runtest_logfinish() -> None:
    progress.end_cell()


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


class UpdateHooks:
    """Runs the ``pytest_cnnbench_update_*`` hooks on what the generating hooks return, so a
    conftest adds to the default instead of re-implementing it."""

    @pytest.hookimpl(wrapper=True)
    def pytest_cnnbench_environment(self, config: pytest.Config, results: list[dict[str, Any]]) -> Any:
        environment = yield
        if isinstance(environment, dict):
            config.hook.pytest_cnnbench_update_environment(config=config, environment=environment)
        return environment


# -- parametrization --------------------------------------------------------------------
def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    return (value,) if isinstance(value, (str, int)) else tuple(value)


def cells_for(settings: Settings, marker: dict[str, Any], model_fixture: Optional[str] = None) -> list[CellSpec]:
    """The cells one test runs: registries x options, narrowed by its cnnbench marker.

    With ``model_fixture`` (a user's ``cnn_model`` fixture feeds the test), the models are that
    fixture's params, so the cells span backends, precisions and batch sizes only."""
    marked = [models.resolve(name) for item in _as_tuple(marker.get("models")) for name in models.expand(item)]
    for name in _as_tuple(marker.get("backends")):
        registry.backends.get(name)
    backends = [b for b in settings.backends if not marker.get("backends") or b in _as_tuple(marker["backends"])]
    batch_sizes = settings.batch_sizes
    if marker.get("batch_sizes") is not None:  # the --cnn-batch-size validator, so 0, -1, 2.5 or '²' fail here too
        try:
            batch_sizes = options.positive_integers(_as_tuple(marker["batch_sizes"])) or settings.batch_sizes
        except options.BadValue as exc:
            raise registry.UnknownNameError(f"batch_sizes: {exc}") from None
    threads = settings.thread_sweep or (None,)  # a sweep: one row per count, the count in its id and key
    if model_fixture is not None:
        dataset = settings.dataset or marker.get("dataset") or ""  # none: the cell says so when it runs
        return [CellSpec("", backend, int(batch_size), dataset, settings.device, precision, model_fixture, count)
                for precision, batch_size, count, backend in itertools.product(settings.precisions, batch_sizes, threads,
                                                                              backends)]
    cells = []
    for model, precision, batch_size, count, backend in itertools.product(
            _marker_models(settings, _as_tuple(marker.get("models")), marked), settings.precisions, batch_sizes,
            threads, backends):
        dataset = settings.dataset or marker.get("dataset") or models.resolve(model).dataset
        cells.append(CellSpec(model, backend, int(batch_size), dataset, settings.device, precision,
                              threads_requested=count))
    return cells


def _marker_models(settings: Settings, listed: tuple, marked: list[models.ModelRef]) -> list[str]:
    """The models of a test: the selected ones its marker lists (the default set), plus zoo models
    (torchvision:NAME, timm:NAME) named on the command line when the marker's models are evaluated on
    the same dataset (so the ImageNet suite runs any ImageNet classifier named with --cnn-model).
    ``listed``: the marker's names as written; ``marked``: what they resolved to (wildcards expanded)."""
    if not listed:
        return list(settings.models)
    datasets = {ref.dataset for ref in marked if not ref.from_zoo}
    selected = [m for m in settings.models
                if m in listed or (models.source_of(m) in models.ZOOS and models.ZOO_DATASET in datasets)]
    if settings.model_names is None:  # --cnn-model=all: the zoo models a marker lists run too
        selected += [ref.name for ref in marked if ref.from_zoo and ref.name not in selected]
    return selected


def _fixturedefs(item: pytest.Item, name: str) -> tuple[Any, ...]:
    """The definitions of fixture ``name`` that ``item`` (a test, or ``metafunc.definition``) sees, innermost
    last. pytest has no public API for them: ``Metafunc``, ``Item`` and ``FixtureRequest`` expose only fixture
    names, and a user's ``cnn_model`` fixture's function, params and ids are needed before it runs. So the one
    private attribute read is here: ``_fixtureinfo.name2fixturedefs`` (checked against pytest 9.2.0; the same
    attribute and shape in pytest 8.x, which ``Metafunc._arg2fixturedefs`` is an alias of)."""
    info = getattr(item, "_fixtureinfo", None)
    return tuple(getattr(info, "name2fixturedefs", {}).get(name) or ())


def _user_model_fixture(fixturedefs: Any, rootpath: Any) -> Optional[tuple[Any, str]]:
    """``(fixturedef, "where")`` when the ``cnn_model`` a test gets is a user's, not this plugin's default."""
    if not fixturedefs:
        return None
    fixturedef = fixturedefs[-1]
    func = getattr(fixturedef, "func", None)
    if func is None or getattr(func, "__module__", None) == __name__:
        return None
    import inspect
    from pathlib import Path

    try:
        path = Path(inspect.getsourcefile(func) or "?")
        line = inspect.getsourcelines(func)[1]
        where = f"{path.relative_to(rootpath) if path.is_relative_to(rootpath) else path}:{line}"
    except (OSError, TypeError):
        where = getattr(func, "__qualname__", "?")
    return fixturedef, f"cnn_model fixture ({where})"


def fixture_param_id(fixturedef: Any, index: int, value: Any) -> str:
    """The id pytest gives param ``index`` of a parametrized fixture (explicit ids first)."""
    raw = fixturedef.params[index] if fixturedef.params is not None and index < len(fixturedef.params) else value
    if getattr(raw, "id", None) and hasattr(raw, "values") and hasattr(raw, "marks"):  # pytest.param(..., id=...)
        return str(raw.id)
    ids = fixturedef.ids
    if isinstance(ids, (list, tuple)) and index < len(ids) and ids[index] is not None:
        return str(ids[index])
    if callable(ids):
        made = ids(value)
        if made is not None:
            return str(made)
    if value is None or isinstance(value, (str, int, float, bool)):
        return str(value)
    return getattr(value, "__name__", None) or f"cnn_model{index}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # "cnn_cell" is in the closure of every cell fixture, unless a user's own cnn_model replaced
    # the plugin's and the test asks for nothing else: then there is no cell to parametrize.
    if "cnn_cell" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[SETTINGS_KEY]
    marker = cnnbench_marker(metafunc.definition)
    user = _user_model_fixture(_fixturedefs(metafunc.definition, "cnn_model"), metafunc.config.rootpath)
    try:
        cells = cells_for(settings, marker, user[1] if user else None)
    except registry.UnknownNameError as exc:
        # A collection error shows just this message and stops the run before anything is built.
        raise pytest.Collector.CollectError(f"{metafunc.definition.nodeid}: @pytest.mark.cnnbench: {exc}") from None
    if cells:
        metafunc.parametrize("cnn_cell", cells, ids=[c.id for c in cells], indirect=True)
    else:
        metafunc.parametrize("cnn_cell", [NO_CELLS], ids=[NO_CELLS], indirect=True)


def _fixture_model_id(item: pytest.Item) -> Optional[str]:
    """For a cell fed by a user's parametrized ``cnn_model`` fixture: that param's id; "" when the
    fixture has no params (its name is known only once it runs); None for registered models."""
    callspec = getattr(item, "callspec", None)
    cell = callspec.params.get("cnn_cell") if callspec is not None else None
    if not isinstance(cell, CellSpec) or cell.model_fixture is None:
        return None
    if "cnn_model" not in callspec.params:
        return ""
    fixturedefs = _fixturedefs(item, "cnn_model")
    if not fixturedefs:
        return ""
    return fixture_param_id(fixturedefs[-1], callspec.indices["cnn_model"], callspec.params["cnn_model"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash[SETTINGS_KEY]
    keep, dropped = [], []
    fixture_models: set[str] = set()
    unnamed_fixture_models = False
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("cnn_cell") == NO_CELLS:
            dropped.append(item)
            continue
        if bool(item.get_closest_marker("cnnbench_selfcheck")) != settings.selfcheck:
            dropped.append(item)  # the harness's self-checks run with --cnn-selfcheck, and alone
            continue
        model_id = _fixture_model_id(item)
        if model_id is not None:
            item.stash[FIXTURE_MODEL_ID] = model_id
            fixture_models.add(model_id)
            unnamed_fixture_models |= model_id == ""
            if model_id and settings.model_names is not None and model_id not in settings.model_names:
                dropped.append(item)
                continue
        keep.append(item)
    if settings.model_names is not None and not unnamed_fixture_models:
        # The last model-name check: only now are the params of users' cnn_model fixtures known.
        unknown = []
        for name in settings.model_names:
            try:
                models.resolve(name, fixture_models)
            except registry.UnknownModelError:
                unknown.append(name)
        if unknown:
            raise pytest.UsageError(str(models.unknown(unknown, fixture_models, option="cnn-model")))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


# -- errors in what the user gave --------------------------------------------------------
# Bad files of a dataset, a cnn_model fixture that returned something unusable, a zoo name: the
# message says what to fix, and the harness's own traceback (plugin, process cache, registry) would
# only bury it. Their reports show the message alone, as pytest.fail(..., pytrace=False) does.
USER_ERRORS = {("pytest_cnnbench.models.fixture_model", "FixtureModelError")}  # that module imports torch: matched by name


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, (DatasetError, registry.UnknownModelError)) or (type(exc).__module__, type(exc).__name__) in USER_ERRORS


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    if call.excinfo is not None and report.failed and is_user_error(call.excinfo.value):
        longrepr = call.excinfo.getrepr(style="value", chain=False)
        if getattr(longrepr, "reprcrash", None) is not None:  # the summary line and the table's reason: no class name
            longrepr.reprcrash.message = str(call.excinfo.value)
        report.longrepr = longrepr
    return report


# -- fixtures ---------------------------------------------------------------------------
def _process_cache(config: pytest.Config) -> Any:
    bench = config.stash.get(PROCESS_CACHE_KEY, None)
    if bench is None:
        from .process_cache import ProcessCache

        reporter = config.pluginmanager.get_plugin("terminalreporter")

        def log(message: str) -> None:
            # Through progress when it shows a live line, so the message does not overwrite it.
            if not progress.write_line(message) and reporter is not None:
                reporter.write_line(message)

        bench = config.stash[PROCESS_CACHE_KEY] = ProcessCache(config.stash[SETTINGS_KEY], log)
    return bench


def _test_name(item: Any) -> str:
    """The test function plus its own parameters (not the cell's): rows of one test share it."""
    callspec = getattr(item, "callspec", None)
    own = {k: v for k, v in (callspec.params.items() if callspec else ()) if k not in ("cnn_cell", "cnn_model")}
    name = getattr(item, "originalname", None) or item.name
    return name + (f"[{','.join(f'{k}={v}' for k, v in own.items())}]" if own else "")


@pytest.fixture
def cnn_cell(request: pytest.FixtureRequest) -> CellSpec:
    """The cell under test (model, backend, batch size, dataset, device, precision); skips when
    its backend cannot run here."""
    from . import results as R

    spec: CellSpec = request.param
    if spec.model_fixture is not None:
        spec = dataclasses.replace(spec, model=request.node.stash.get(FIXTURE_MODEL_ID, ""))
    # Identity first, so a skip or an error in any later step still lands in the table.
    identity = {**spec.as_dict(), "test": request.node.nodeid, "test_name": _test_name(request.node)}
    request.node.user_properties.append((R.CELL_PROPERTY, identity))
    request.node.stash[IDENTITY] = identity
    from .process_cache import resolve_device
    from . import registry as reg

    device = identity["device"] = resolve_device(spec.device)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("--cnn-device=cuda, but no CUDA GPU is available here (torch.cuda.is_available() is False)")
    reason = reg.backends.create(spec.backend).unavailable_reason(device, spec.precision)
    if reason:
        pytest.skip(reason)
    if spec.threads_requested is not None:
        reason = _threads_unavailable(spec.threads_requested, device)
        if reason:
            pytest.skip(reason)
    return spec


def _threads_unavailable(count: int, device: str) -> Optional[str]:
    """Why a thread sweep's count cannot run here: more threads than the cores this process may use."""
    if device != "cpu":
        return f"--cnn-threads={count}: thread counts are a CPU dimension (this cell runs on {device})"
    from .environment import cpu_count

    cores = cpu_count()
    if count > cores:
        return f"--cnn-threads={count}: this machine gives the process {cores} core{'s' * (cores != 1)}"
    return None


@pytest.fixture
def cnn_model(cnn_cell: CellSpec, request: pytest.FixtureRequest) -> Any:
    """The model under test: the cell's registered model, as a ``BuiltModel`` (module,
    preprocessing, weights provenance).

    Override it in a conftest.py or test module, parametrized, to benchmark your own models:
    each param becomes a row on every selected backend (see README, "Adding a model")."""
    from .core import CellSkip
    from .worklock import MachineLock

    try:
        with MachineLock("cpu").shared():  # building (training LeNet, say) never runs beside another worker's timing
            return _process_cache(request.config).registered_model(cnn_cell).built
    except CellSkip as exc:
        pytest.skip(str(exc))


@pytest.fixture
def cnnbench(cnn_cell: CellSpec, cnn_model: Any, request: pytest.FixtureRequest) -> Any:
    """Measures the cell: ``cnnbench.run()`` returns its result; ``check_accuracy``/``check_agreement`` assert."""
    from .models.fixture_model import check_fixture_model
    from .runner import CellRunner

    bench = _process_cache(request.config)
    identity = request.node.stash[IDENTITY]
    spec = cnn_cell
    if spec.model_fixture is None:
        model = bench.registered_model(spec)  # built for cnn_model already: a cache hit
    else:
        built, info = check_fixture_model(cnn_model, spec, cnnbench_marker(request.node))
        names = bench.settings.model_names
        if not spec.model and names is not None and info.name not in names:
            pytest.skip(f"model {info.name!r} is not selected by --cnn-model")
        spec = dataclasses.replace(spec, model=info.name)
        identity["model"] = info.name
        model = bench.fixture_model(built, spec, info)
    return CellRunner(spec, bench, request, identity, model, identity["device"])


@pytest.fixture
def cnn_dataset(cnnbench: Any) -> Any:
    """``(dataset, images, labels)`` for the cell, preprocessed for its model."""
    return cnnbench.bench.dataset(cnnbench.spec, cnnbench.model.built, cnnbench.model.info)
