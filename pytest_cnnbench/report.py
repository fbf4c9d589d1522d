"""Reports from result dicts (Markdown, CSV, JSON, HTML through page.py), and the command line that merges result files.

Pure formatting, no pytest: the plugin writes ``--cnn-report`` files with it at the end of a
session, and ``python -m pytest_cnnbench.report a.json b.json ...`` prints one table over
several saved runs (from several machines or GPUs) and writes the same reports and charts.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from . import results as R
from . import table
from .cache import write_output

MERGED = "merged"  # environment key of a merged result file: one entry per source
CODE = "\x00"  # marks code spans in environment lines: backticks in Markdown, nothing in plain text


# -- environment ------------------------------------------------------------------------------
def _versions(env: dict[str, Any]) -> str:
    names = {"python": "Python", "torch": "torch", "torchvision": "torchvision", "onnxruntime": "ONNX Runtime",
             "onnxruntime-gpu": "ONNX Runtime (GPU)", "tensorrt": "TensorRT", "torch-tensorrt": "Torch-TensorRT",
             "pytest-benchmark": "pytest-benchmark", "pytest-cnnbench": "pytest-cnnbench"}
    versions = env.get("versions") or {}
    return ", ".join(f"{names.get(k, k)} {v}" for k, v in versions.items() if v) or "unknown"


def _options(options: dict[str, Any]) -> str:
    def text(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ",".join(text(v) for v in value) if value else "-"
        if isinstance(value, dict):
            return ":".join(str(v) for v in value.values())
        return str(value)

    return "; ".join(f"{k}={text(v)}" for k, v in options.items() if v not in (None, [], (), ""))


def summary_line(env: dict[str, Any]) -> str:
    """One line per run for a terminal: machine, software, commit."""
    commit = f", commit {env['git_commit'][:10]}" if env.get("git_commit") else ""
    return f"{machine(env)}; {_versions(env)}{commit}"


def machine(env: dict[str, Any]) -> str:
    """One line: CPU and cores, GPU, OS. E.g. ``Intel Xeon (2 cores), no GPU, Debian 12``."""
    cpu = f"{env.get('cpu') or 'unknown CPU'} ({env.get('cpu_count') or '?'} cores)"
    gpus = env.get("gpus") or [d for d in env.get("devices") or [] if not str(d).startswith("cpu")]
    gpu = ", ".join(gpus) if gpus else "no GPU"
    if env.get("gpu_driver"):
        gpu += f" (driver {env['gpu_driver']})"
    return f"{cpu}, {gpu}, {env.get('os') or env.get('platform') or 'unknown OS'}"


def environment_lines(env: dict[str, Any]) -> list[str]:
    """The environment of one run as ``label: value`` lines."""
    if MERGED in env:  # a merged file: each source's lines, indented under its name
        return [line for entry in env[MERGED]
                for line in [f"{entry['source']}:", *("  " + sub for sub in environment_lines(entry["environment"]))]]
    lines = [f"machine: {machine(env)}"]
    if env.get("devices"):
        lines.append("devices used: " + ", ".join(env["devices"]))
    lines.append("software: " + _versions(env))
    if env.get("env_vars"):
        lines.append("environment variables: " + ", ".join(f"{k}={v}" for k, v in env["env_vars"].items()))
    if env.get("git_commit"):
        lines.append(f"git commit: {env['git_commit']}" + (" (with uncommitted changes)" if env.get("git_dirty") else ""))
    if env.get("timestamp"):
        lines.append(f"finished: {env['timestamp']}")
    if env.get("argv") is not None:
        lines.append("command: " + CODE + "pytest " + " ".join(env["argv"]) + CODE)
    if env.get("options"):
        lines.append("options: " + CODE + _options(env["options"]) + CODE)
    return lines


# -- writers ----------------------------------------------------------------------------------
def markdown(results: Sequence[dict[str, Any]], environment: dict[str, Any], comparison: Any = None,
             title: str = "pytest-cnnbench results") -> str:
    """The comparison table as Markdown (GitHub tables) with the environment, notes and comparison."""
    results = list(results)
    changes = comparison.table_changes() if comparison is not None else None
    out = [f"# {title}", "", "## Environment", ""]
    for line in environment_lines(environment):  # _md turns CODE marks into code spans
        indent = line[: len(line) - len(line.lstrip())]
        out.append(f"{indent}- {_md(line.lstrip())}")
    out += ["", "## Results", ""]
    if results:
        out += [table.table_body(results, "github", changes), ""]
        answer = table.fastest_within_budget(results)  # the deployer's answer, under the table
        out += [_md(answer[0]), *[f"- {_md(line.strip())}" for line in answer[1:]], ""] if answer else []
        out += [f"- {_md(note)}" for note in table.table_notes(results)]
    else:
        out.append("No cells ran.")
    if comparison is not None:
        out += ["", "## Comparison with the baseline", ""]
        out += [f"- {_md(note)}" for note in comparison.notes()]
        if comparison.rules:
            rules = ", ".join(rule.text for rule in comparison.rules)
            out += [f"- {_md(line)}" for line in comparison.rule_lines()]
            if comparison.violations:
                out += ["", f"**{len(comparison.violations)} regression(s) past the fail rules ({rules}):**", ""]
                out += [f"- {_md(v.message)}" for v in comparison.violations]
            if comparison.gate_failures():
                out += ["", f"**the fail rules ({rules}) could not check what they were asked to:**", ""]
                out += [f"- {_md(line)}" for line in comparison.gate_failures()]
            if not comparison.failed:
                out += [f"- every matching cell is within the fail rules ({_md(rules)})"]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    """Plain text in a Markdown list item: ``*``, ``_``, ``|``, ``<`` stay literal; CODE-marked parts become code."""
    parts = text.split(CODE)
    for i, part in enumerate(parts):
        if i % 2:  # inside a code span: only a backtick run longer than any inside can fence it
            fence = "`" * (max(map(len, re.findall("`+", part)), default=0) + 1)
            parts[i] = f"{fence} {part} {fence}" if "`" in part else f"`{part}`"
        else:
            for char in ("\\", "*", "_", "|", "<", "`"):
                part = part.replace(char, "\\" + char)
            parts[i] = part
    return "".join(parts)


def _scalar(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def csv_columns(results: Sequence[dict[str, Any]]) -> list[str]:
    """Every figure of every row: nested dicts (latency_ms, memory_mb, agreement) become ``outer_inner``."""
    order: dict[str, dict[str, None]] = {}  # top-level key -> inner keys ({} for scalars)
    for r in results:
        for key, value in r.items():
            inner = order.setdefault(key, {})
            if isinstance(value, dict):
                inner.update(dict.fromkeys(value))
    columns = []
    for key, inner in order.items():
        columns += [f"{key}_{sub}" for sub in inner] if inner else [key]
    if "source" in columns:  # first, like the table's column
        columns.insert(0, columns.pop(columns.index("source")))
    return columns


def csv_rows(results: Sequence[dict[str, Any]], comparison: Any = None) -> tuple[list[str], list[dict[str, Any]]]:
    from .compare import METRICS

    results = list(results)
    columns = csv_columns(results)
    rows = []
    for r in results:
        flat: dict[str, Any] = {}
        for key, value in r.items():
            if isinstance(value, dict):
                flat.update({f"{key}_{sub}": _scalar(v) for sub, v in value.items()})
            else:
                flat[key] = _scalar(value)
        rows.append(flat)
    if comparison is not None:
        extra = [f"change_{name}_{'pct' if m.relative else 'pp'}" for name, m in METRICS.items()] + ["regressions"]
        columns += extra
        for flat, cell in zip(rows, comparison.cells):
            if cell is None:
                flat["regressions"] = "not in baseline"
                continue
            for name, metric in METRICS.items():
                change = cell.changes.get(name)
                flat[f"change_{name}_{'pct' if metric.relative else 'pp'}"] = "" if change is None else round(change, 4)
            flat["regressions"] = ",".join(cell.broken)
    return columns, rows


def csv_text(results: Sequence[dict[str, Any]], comparison: Any = None) -> str:
    columns, rows = csv_rows(results, comparison)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_markdown(path: Path, results: Sequence[dict[str, Any]], environment: dict[str, Any], comparison: Any = None) -> None:
    write_output(path, markdown(results, environment, comparison).encode("utf-8"))


def write_csv(path: Path, results: Sequence[dict[str, Any]], environment: dict[str, Any], comparison: Any = None) -> None:
    write_output(path, csv_text(results, comparison).encode("utf-8"))


def write_json(path: Path, results: Sequence[dict[str, Any]], environment: dict[str, Any], comparison: Any = None) -> None:
    R.write_json(path, results, environment)  # the --cnn-json format; comparisons are not stored


def write_html(path: Path, results: Sequence[dict[str, Any]], environment: dict[str, Any], comparison: Any = None,
               sections: Optional[Sequence[tuple[str, str]]] = None) -> None:
    from .page import page  # the standalone page: table, charts, comparison, environment in one file

    write_output(path, page(results, environment, comparison, sections=sections).encode("utf-8"))


WRITERS: dict[str, Callable[..., None]] = {".md": write_markdown, ".csv": write_csv, ".json": write_json,
                                           ".html": write_html}


def write_reports(paths: Iterable[Path], results: Sequence[dict[str, Any]], environment: dict[str, Any],
                  comparison: Any = None, sections: Optional[Sequence[tuple[str, str]]] = None) -> list[Path]:
    """Write each path with the writer its extension picks; returns the paths written. ``sections``: the
    plugins' sections for the HTML page (``page.extra_sections``)."""
    written = []
    for path in paths:
        writer = WRITERS.get(Path(path).suffix.lower())
        if writer is None:
            raise ValueError(f"{path}: no report format for this extension; valid: {', '.join(WRITERS)}")
        if writer is write_html:
            write_html(Path(path), list(results), environment, comparison, sections)
        else:
            writer(Path(path), list(results), environment, comparison)
        written.append(Path(path))
    return written


# -- merging ----------------------------------------------------------------------------------
def source_labels(paths: Sequence[Path]) -> list[str]:
    """The file name, or the path as given where names collide; ``#2``... for a file given twice."""
    names = [Path(p).name for p in paths]
    labels = [Path(p).name if names.count(Path(p).name) == 1 else str(p) for p in paths]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def merge(documents: Sequence[dict[str, Any]], labels: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of several result documents, each with a ``source``; nothing is de-duplicated.

    A single document keeps its rows and environment as they are."""
    if len(documents) == 1:
        return list(documents[0]["results"]), documents[0]["environment"]
    rows, sources = [], []
    for doc, label in zip(documents, labels):
        for row in doc["results"]:
            rows.append({**row, "source": f"{label}:{row['source']}" if row.get("source") else label})
        sources.append({"source": label, "environment": doc.get("environment") or {}})
    return rows, {MERGED: sources}


def _split_paths(values: Optional[list[str]]) -> list[Path]:
    return [Path(item.strip()) for value in values or () for item in value.split(",") if item.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_cnnbench.report",
        description="Print one comparison table over pytest-cnnbench result files (from --cnn-json or "
                    "--cnn-report x.json), e.g. runs from several machines or GPUs; optionally write reports and a chart.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="RESULT.json", help="result files to merge")
    parser.add_argument("--report", action="append", metavar="PATH",
                        help="write a report by extension: .md, .csv, .html (a page in one file) or .json (merged result file); "
                             "comma list, may be repeated")
    parser.add_argument("--plot", type=Path, metavar="PATH", help="draw the charts into this image (.png, .svg or .pdf)")
    parser.add_argument("--tablefmt", default="simple", help="tabulate format of the printed table (default: simple)")
    args = parser.parse_args(argv)

    reports = _split_paths(args.report)
    for path in reports:
        if path.suffix.lower() not in WRITERS:
            parser.error(f"--report {path}: unknown extension; valid: {', '.join(WRITERS)}")
    if args.plot is not None:
        from .plot import FORMATS

        if args.plot.suffix.lower() not in FORMATS:
            parser.error(f"--plot {args.plot}: unknown extension; valid: {', '.join(FORMATS)}")

    documents = []
    for path in args.files:
        try:
            documents.append(R.load_json(path))
        except ValueError as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2
    rows, environment = merge(documents, source_labels(args.files))

    if MERGED in environment:
        print("\n".join(f"{entry['source']}: {summary_line(entry['environment'])}" for entry in environment[MERGED]))
    else:
        print(table.format_environment(environment))
    print(table.format_table(rows, tablefmt=args.tablefmt) if rows else "no cells in these result files")
    try:
        for path in write_reports(reports, rows, environment):
            print(f"report written to {path}")
        if args.plot is not None:
            from .plot import plot

            summary = plot(rows, args.plot, title=plot_title(environment))
            print(f"chart written to {summary.path} ({summary.width}x{summary.height} px)")
    except (OSError, ImportError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def plot_title(environment: dict[str, Any]) -> str:
    if MERGED in environment:
        return "pytest-cnnbench: " + ", ".join(entry["source"] for entry in environment[MERGED])
    return f"pytest-cnnbench on {machine(environment)}"


if __name__ == "__main__":
    sys.exit(main())
