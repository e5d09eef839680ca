"""Count ``Any`` in the public signatures of the core and both integrations.

    python scripts/count_any.py            # totals, and the count per file
    python scripts/count_any.py --list     # every signature slot that mentions Any
    python scripts/count_any.py --all      # private names and modules too

A *slot* is one parameter annotation, one return annotation, or one annotated class attribute
(a dataclass or pydantic field, which is part of the constructor's signature). A slot counts
when its annotation mentions ``Any`` anywhere (``Any``, ``dict[str, Any]``,
``typing.Any``, ``Callable[..., Any]``); ``bare`` counts the slots that are ``Any`` itself.

Public means: a module whose dotted path has no part starting with ``_`` (``__init__`` and
``__main__`` excepted), a class or function whose name does not start with ``_``, and of the
dunder methods only ``__init__``, ``__call__``, ``__enter__``/``__exit__`` and their async
twins. ``self`` / ``cls`` are skipped. The source is parsed, not imported.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    ROOT / "src" / "qwen3guard",
    ROOT / "integrations" / "langchain" / "src" / "langchain_qwen3guard",
    ROOT / "integrations" / "llama-index" / "llama_index" / "postprocessor" / "qwen3guard",
]
PUBLIC_DUNDERS = {
    "__init__",
    "__call__",
    "__enter__",
    "__exit__",
    "__aenter__",
    "__aexit__",
    "__iter__",
    "__aiter__",
}


@dataclass(frozen=True)
class Slot:
    path: str
    line: int
    where: str
    annotation: str

    @property
    def bare(self) -> bool:
        return self.annotation in ("Any", "typing.Any", "t.Any")


def _mentions_any(node: ast.expr) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id == "Any":
            return True
        if isinstance(sub, ast.Attribute) and sub.attr == "Any":
            return True
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            # a quoted annotation: parse it and look inside
            try:
                inner = ast.parse(sub.value, mode="eval").body
            except SyntaxError:
                continue
            if _mentions_any(inner):
                return True
    return False


def _public_name(name: str, *, method: bool) -> bool:
    if method and name in PUBLIC_DUNDERS:
        return True
    return not name.startswith("_")


def _public_module(path: Path, package: Path) -> bool:
    parts = path.relative_to(package).with_suffix("").parts
    return all(p in ("__init__", "__main__") or not p.startswith("_") for p in parts)


def _function_slots(
    fn: ast.FunctionDef | ast.AsyncFunctionDef, owner: str
) -> Iterator[tuple[int, str, ast.expr]]:
    args = fn.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if args.vararg is not None:
        params.append(args.vararg)
    if args.kwarg is not None:
        params.append(args.kwarg)
    for i, arg in enumerate(params):
        if i == 0 and owner and arg.arg in ("self", "cls"):
            continue
        if arg.annotation is not None:
            yield arg.lineno, f"{owner}{fn.name}({arg.arg})", arg.annotation
    if fn.returns is not None:
        yield fn.lineno, f"{owner}{fn.name} -> return", fn.returns


def slots_in(path: Path, *, include_private: bool) -> Iterator[tuple[int, str, ast.expr]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(body: list[ast.stmt], owner: str) -> Iterator[tuple[int, str, ast.expr]]:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if include_private or _public_name(node.name, method=bool(owner)):
                    yield from _function_slots(node, owner)
            elif isinstance(node, ast.ClassDef):
                if include_private or _public_name(node.name, method=False):
                    yield from visit(node.body, f"{owner}{node.name}.")
            elif isinstance(node, ast.AnnAssign) and owner and isinstance(node.target, ast.Name):
                name = node.target.id
                if include_private or not name.startswith("_"):
                    yield node.lineno, f"{owner}{name} (field)", node.annotation
            elif isinstance(node, ast.If):  # if TYPE_CHECKING: / sys.version_info branches
                yield from visit(node.body, owner)
                yield from visit(node.orelse, owner)

    yield from visit(tree.body, "")


def collect(*, include_private: bool = False) -> tuple[list[Slot], int]:
    """The slots that mention Any, and the number of annotated slots looked at."""
    found: list[Slot] = []
    total = 0
    for package in PACKAGES:
        for path in sorted(package.rglob("*.py")):
            if not include_private and not _public_module(path, package):
                continue
            rel = str(path.relative_to(ROOT))
            for line, where, annotation in slots_in(path, include_private=include_private):
                total += 1
                if _mentions_any(annotation):
                    found.append(Slot(rel, line, where, ast.unparse(annotation)))
    return found, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print every slot that mentions Any")
    parser.add_argument("--all", action="store_true", help="count private names and modules too")
    args = parser.parse_args(argv)

    found, total = collect(include_private=args.all)
    if args.list:
        for slot in found:
            print(f"{slot.path}:{slot.line}: {slot.where}: {slot.annotation}")
        print()
    per_file: dict[str, int] = {}
    for slot in found:
        per_file[slot.path] = per_file.get(slot.path, 0) + 1
    for path, count in sorted(per_file.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{count:5d}  {path}")
    bare = sum(slot.bare for slot in found)
    scope = "all" if args.all else "public"
    print(
        f"Any in {scope} signatures: {len(found)} of {total} annotated slots "
        f"({bare} bare Any) in {len(per_file)} files"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
