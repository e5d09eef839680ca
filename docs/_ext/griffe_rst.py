"""A Griffe extension (mkdocs.yml, mkdocstrings' ``extensions``) for the docstrings' reST roles.

Sphinx-style ``#:`` comments above an attribute are its docstring (Griffe reads only a string
after the assignment).

The docstrings are written for plain ``help()``: reST roles (``:class:`Policy```,
``:meth:`~qwen3guard.Qwen3Guard.screen```) and double-backtick literals. Markdown renders the
literals as code already; the roles would show raw. A role becomes a link to the object's entry
in the API reference when the reference documents it (an identifier of a ``:::`` line in
``docs/api/*.md``, found by its full path or, when unambiguous, its last name), else inline code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

API_PAGES = Path(__file__).resolve().parents[1] / "api"
_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj|const):`(~?)([^`<>]+?)(?:\(\))?`"
)
_DIRECTIVE = re.compile(r"^::: *([\w.]+)", re.MULTILINE)


def documented() -> dict[str, str]:
    """Every identifier of the API pages, under its full path and its last name (a last name
    that two identifiers share is left out)."""
    ids = {
        m.group(1) for page in API_PAGES.glob("*.md") for m in _DIRECTIVE.finditer(page.read_text())
    }
    found: dict[str, str] = {i: i for i in ids}
    short: dict[str, set[str]] = {}
    for i in ids:
        short.setdefault(i.rsplit(".", 1)[-1], set()).add(i)
    for name, targets in short.items():
        if len(targets) == 1 and name not in found:
            found[name] = next(iter(targets))
    return found


def convert(text: str, known: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        tilde, target = m.group(1), m.group(2).strip()
        shown = target.rsplit(".", 1)[-1] if tilde else target
        full = known.get(target)
        if full is None and target.startswith(("qwen3guard.", "langchain_qwen3guard.")):
            full = known.get(target.rsplit(".", 1)[-1])
        return f"[`{shown}`][{full}]" if full else f"`{shown}`"

    text = _ROLE.sub(repl, text)
    # a reST literal block: "text::" is "text:" before it, a lone "::" nothing
    text = re.sub(r"^[ \t]*::[ \t]*\n", "", text, flags=re.MULTILINE)
    return re.sub(r"(\S)::[ \t]*\n", r"\1:\n", text)


class RstRoles(griffe.Extension):
    """Rewrite reST roles and literal-block markers in every docstring Griffe loads."""

    def __init__(self) -> None:
        super().__init__()
        self.known = documented()

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        if attr.docstring is not None or attr.lineno is None or attr.filepath is None:
            return
        lines = attr.lines_collection[attr.filepath]
        comment: list[str] = []
        i = attr.lineno - 2
        while i >= 0 and lines[i].lstrip().startswith("#:"):
            comment.insert(0, lines[i].lstrip()[2:].strip())
            i -= 1
        if comment:
            attr.docstring = griffe.Docstring(
                convert(" ".join(comment), self.known), lineno=i + 2, parent=attr
            )

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = convert(obj.docstring.value, self.known)
