"""The documentation stays true to the code: docs/options.md lists exactly the options options.py defines."""

from __future__ import annotations

import re

import pytest

from conftest import REPO
from pytest_cnnbench.coldstart import plugin as coldstart
from pytest_cnnbench.mlperf import plugin as loadgen
from pytest_cnnbench.options import FLAGS, OPTIONS

# A sub-plugin's options are in the same group, so on the same page.
OPTIONS, FLAGS = {**OPTIONS, **coldstart.OPTIONS, **loadgen.OPTIONS}, FLAGS | coldstart.FLAGS | loadgen.FLAGS

OPTIONS_PAGE = REPO / "docs" / "options.md"
OPTION_NAME = re.compile(r"--(cnn-[a-z0-9]+(?:-[a-z0-9]+)*)")


def option_rows(text: str) -> dict[str, list[str]]:
    """``{option: [ini, default, what it does]}`` from the page's table (rows starting with ``| `--``)."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.startswith("| `--"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|", 3)]
        name = cells[0].strip("`").removeprefix("--")
        assert name not in rows, f"docs/options.md: two rows for --{name}"
        rows[name] = cells[1:]
    return rows


def expected_default(name: str) -> str | None:
    """The default cell options.py implies; None where the page says it in words (e.g. $CNNBENCH_DATA_ROOT)."""
    if name in FLAGS:
        return "off"
    default = OPTIONS[name][1]
    return f"`{default}`" if default is not None else None


def problems(text: str, page: str = "docs/options.md") -> list[str]:
    rows = option_rows(text)
    found = []
    for name in OPTIONS:
        if name not in rows:
            found.append(f"{page}: no row for --{name}")
            continue
        ini, default = rows[name][0], rows[name][1]
        if ini != f"`{name.replace('-', '_')}`":
            found.append(f"{page}: --{name}: ini {ini}, expected `{name.replace('-', '_')}`")
        wanted = expected_default(name)
        if wanted is not None and default != wanted:
            found.append(f"{page}: --{name}: default {default}, options.py says {wanted}")
        elif wanted is None and not default:
            found.append(f"{page}: --{name}: empty default cell")
    found += stale(text, page)
    return found


def stale(text: str, page: str) -> list[str]:
    # Command-line spellings only: `cnn_model` and friends are fixture names as well as ini names.
    named = set(OPTION_NAME.findall(text))
    return [f"{page}: names --{name}, which options.py does not define" for name in sorted(named - set(OPTIONS))]


def test_options_page_lists_every_option_with_its_ini_name_and_default():
    assert problems(OPTIONS_PAGE.read_text()) == []


@pytest.mark.parametrize("page", ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))])
def test_no_page_names_an_option_that_does_not_exist(page):
    assert stale((REPO / page).read_text(), page) == []


def test_the_check_catches_a_missing_row_a_wrong_default_and_a_stale_option():
    text = OPTIONS_PAGE.read_text()
    text = re.sub(r"^\| `--cnn-warmup` .*\n", "", text, flags=re.M)
    text = text.replace("| `--cnn-device` | `cnn_device` | `auto` |", "| `--cnn-device` | `cnn_device` | `cpu` |")
    text += "| `--cnn-turbo` | `cnn_turbo` | off | an option that was removed |\n"
    assert sorted(problems(text)) == [
        "docs/options.md: --cnn-device: default `cpu`, options.py says `auto`",
        "docs/options.md: names --cnn-turbo, which options.py does not define",
        "docs/options.md: no row for --cnn-warmup",
    ]


def test_readme_common_options_show_the_defaults_options_py_has():
    wrong = []
    for line in (REPO / "README.md").read_text().splitlines():
        if not line.startswith("| `--"):
            continue
        name, default = [cell.strip() for cell in line.strip().strip("|").split("|", 2)][:2]
        name = name.strip("`").removeprefix("--")
        assert name in OPTIONS, f"README.md: --{name} is not an option"
        wanted = expected_default(name)
        if wanted is not None and default != wanted:
            wrong.append(f"README.md: --{name}: default {default}, options.py says {wanted}")
    assert wrong == []
