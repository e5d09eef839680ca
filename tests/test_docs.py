"""The reference site (mkdocs.yml, docs/) against the code: every public name has an API entry,
the configuration tables say what the code does, every notebook and include is found.

`make docs` (mkdocs build --strict) builds the site; these checks are what a build cannot see.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from qwen3guard import Policy, Qwen3Guard, Surface, SurfaceRule
from qwen3guard.defaults import DEFAULT_GEN_MODEL, DEFAULT_STREAM_MODEL

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG_PAGE = DOCS / "configuration.md"

PACKAGES = {
    "qwen3guard": ROOT / "src/qwen3guard/__init__.py",
    "qwen3guard.tracing": ROOT / "src/qwen3guard/tracing.py",
    "langchain_qwen3guard": ROOT / "integrations/langchain/src/langchain_qwen3guard/__init__.py",
    "llama_index.postprocessor.qwen3guard": ROOT
    / "integrations/llama-index/llama_index/postprocessor/qwen3guard/__init__.py",
}


def public_names(init: Path) -> list[str]:
    """``__all__`` of a package's ``__init__.py``, read without importing it."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [n for n in ast.literal_eval(node.value) if n != "__version__"]
    raise AssertionError(f"{init} has no __all__")


def api_identifiers() -> set[str]:
    return {
        m.group(1)
        for page in (DOCS / "api").glob("*.md")
        for m in re.finditer(r"^::: *([\w.]+)", page.read_text(encoding="utf-8"), re.MULTILINE)
    }


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_public_name_has_an_api_entry(package: str) -> None:
    ids = api_identifiers()
    missing = [
        name
        for name in public_names(PACKAGES[package])
        if not any(i.startswith(package + ".") and i.rsplit(".", 1)[-1] == name for i in ids)
        and f"{package}.{name}" not in ids
    ]
    assert not missing, f"not on an API page (docs/api/*.md, '::: {package}.NAME'): {missing}"


def table(heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table under ``heading`` in the configuration
    page."""
    lines = CONFIG_PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
        elif rows:
            break
    assert len(rows) > 2, f"no table under {heading!r}"
    return rows[2:]  # without the header and the --- line


def code(cell: str) -> str:
    m = re.fullmatch(r"`([^`]*)`", cell)
    assert m, f"expected one code span, got {cell!r}"
    return m.group(1)


def value(text: str) -> Any:
    return eval(text, {"__builtins__": {}, "frozenset": frozenset, "dict": dict})


def field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@pytest.mark.parametrize(
    ("heading", "cls"),
    [("## Policy", Policy), ("### Per surface: `SurfaceRule`", SurfaceRule)],
)
def test_policy_tables_match_the_dataclasses(heading: str, cls: type) -> None:
    rows = {code(r[0]): r for r in table(heading)}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert list(rows) == list(fields)
    for name, row in rows.items():
        assert value(code(row[2])) == field_default(fields[name]), name


def test_surfaces_table_lists_every_surface() -> None:
    rows = table("### Surfaces")
    assert {code(r[0]): code(r[1]) for r in rows} == {s.name: s.value for s in Surface}


def test_decision_reasons_are_the_code_s() -> None:
    source = inspect.getsource(Policy.decide)
    literal = set(re.findall(r'Decision\(\w+, \w+, surface, "([^"]+)"\)', source))
    assert literal, "the reasons are no longer literals in Policy.decide: update this test"
    reasons = " ".join(
        r[3]
        for r in table(
            "How `Policy.decide(verdict, surface)` decides, in this order (the first that applies):"
        )
    )
    for reason in literal:
        assert f"`{reason}`" in reasons, reason
    for risk in ("unsafe", "controversial"):  # f"{risk}; {mode} mode"
        assert f"`{risk}; strict mode`" in reasons


@pytest.mark.parametrize("method", ["from_pretrained", "from_endpoint"])
def test_constructor_tables_match_the_signatures(method: str) -> None:
    rows = {
        code(r[0]): r[1]
        for r in table(
            f"### `Qwen3Guard.{method}` "
            + {"from_pretrained": "(in process)", "from_endpoint": "(a served Gen)"}[method]
        )
    }
    params = {
        name: p
        for name, p in inspect.signature(getattr(Qwen3Guard, method)).parameters.items()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    }
    assert list(rows) == list(params)
    for name, p in params.items():
        if p.default is inspect.Parameter.empty:
            assert rows[name] == "(required)", name
        else:
            assert value(code(rows[name])) == p.default, name


def package_sources() -> list[Path]:
    files = list((ROOT / "src/qwen3guard").rglob("*.py"))
    for pkg in ("integrations/langchain/src", "integrations/llama-index/llama_index"):
        files += [p for p in (ROOT / pkg).rglob("*.py") if "tests" not in p.parts]
    return files


def test_environment_table_lists_every_variable_with_its_default() -> None:
    rows = {code(r[0]): r[1] for r in table("## Environment variables")}
    used: set[str] = set()
    defaults: dict[str, str] = {}
    for path in package_sources():
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r"\bQWEN3GUARD_[A-Z_]*[A-Z]\b", text))
        for name, default in re.findall(r'get\(\s*"(QWEN3GUARD_\w+)",\s*"([^"]*)"\)', text):
            defaults[name] = default
    assert set(rows) == used
    defaults["QWEN3GUARD_MODEL"] = DEFAULT_GEN_MODEL
    defaults["QWEN3GUARD_STREAM_MODEL"] = DEFAULT_STREAM_MODEL
    for name, cell in rows.items():
        if defaults.get(name):
            assert cell == f"`{defaults[name]}`", name
        else:
            assert cell == "(unset)", name


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "_ext/hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_include_finds_its_section() -> None:
    hooks = load_hooks()
    found = 0
    for page in DOCS.rglob("*.md"):
        for path, heading in re.findall(
            r'^<!-- include (\S+) "([^"]+)" -->', page.read_text(encoding="utf-8"), re.MULTILINE
        ):
            text, _ = hooks.section(ROOT / path, heading)
            assert text.strip(), (page, path, heading)
            found += 1
    assert found >= 3


def test_every_notebook_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [
        p.name for p in (ROOT / "cookbook").glob("*.ipynb") if f"cookbook/{p.name}" not in nav
    ]
    assert not missing, f"add to the nav of mkdocs.yml: {missing}"
