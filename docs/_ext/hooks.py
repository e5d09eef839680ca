"""MkDocs hooks for the reference site (mkdocs.yml: ``hooks``).

The site shows files that live outside ``docs/`` as they are, so they cannot drift from it:

- ``SOURCES`` maps repository files (the README, the integrations' READMEs, the cookbook) to
  pages of the site;
- ``<!-- include PATH "Heading" -->`` in a page of ``docs/`` is replaced by the section of
  ``PATH`` under that heading (the build fails when the heading is gone);
- ``<!-- cli-help -->`` is replaced by the ``--help`` of ``qwen3guard`` and of each of its
  commands, from the CLI's own parser;
- a notebook page says, under its title, that it shows the notebook as stored (without
  outputs: the tests execute the notebooks, the repository keeps them clean);
- a list nested by two spaces (as GitHub reads it) is nested by four, as Python-Markdown
  needs;
- a relative link in any of those is resolved against the file's place in the repository and
  pointed at the page that shows the target (a link to a repository file the site does not
  show is left alone, so ``mkdocs build --strict`` reports it).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]

#: repository path (a file, or a glob) -> the page's path in the site ("*" keeps the name)
SOURCES: dict[str, str] = {
    "README.md": "index.md",
    "integrations/langchain/README.md": "integrations/langchain.md",
    "integrations/llama-index/README.md": "integrations/llama-index.md",
    "cookbook/README.md": "cookbook/index.md",
    "cookbook/*.ipynb": "cookbook/*",
}

_CLI_HELP = "<!-- cli-help -->"
_INCLUDE = re.compile(r'^<!-- include (\S+) "([^"]+)" -->[ \t]*$', re.MULTILINE)
_LINK = re.compile(r"(\]\()([^)\s#]+)((?:#[^)\s]*)?\))")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")

# abs path of a repository file -> its File in the site (filled by on_files)
_by_path: dict[Path, File] = {}


@event_priority(100)  # before mkdocs-jupyter wraps the notebooks
def on_files(files: Files, config: MkDocsConfig) -> Files:
    for pattern, target in SOURCES.items():
        paths = sorted(ROOT.glob(pattern))
        if not paths:
            raise PluginError(f"docs hooks: no file matches {pattern!r}")
        for path in paths:
            uri = target.replace("*", path.name)
            if uri == path.relative_to(ROOT).as_posix():
                # a real file at its own path (mkdocs-jupyter reads notebooks through src_dir)
                f = File(uri, str(ROOT), config.site_dir, config.use_directory_urls)
            else:
                f = File.generated(config, uri, abs_src_path=str(path))
            files.append(f)
    _by_path.clear()
    for f in files:
        if f.abs_src_path:
            _by_path[Path(f.abs_src_path).resolve()] = f
    return files


def rewrite_links(markdown: str, source: Path, page_uri: str) -> str:
    """Point relative links of ``source`` (a repository file) at the pages that show them, as
    seen from the page at ``page_uri``."""

    def repl(m: re.Match[str]) -> str:
        target = m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return m.group(0)
        shown = _by_path.get((source.parent / target).resolve())
        if shown is None:
            return m.group(0)
        rel = posixpath.relpath(shown.src_uri, posixpath.dirname(page_uri) or ".")
        return f"{m.group(1)}{rel}{m.group(3)}"

    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(repl, line))
    return "".join(out)


def section(path: Path, heading: str) -> tuple[str, int]:
    """The text under ``heading`` in ``path`` (to the next heading of its level or above) and
    the heading's level."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    fenced, start, level = False, None, 0
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if not m:
            continue
        if start is None and m.group(2) == heading:
            start, level = i + 1, len(m.group(1))
        elif start is not None and len(m.group(1)) <= level:
            return "".join(lines[start:i]), level
    if start is None:
        raise PluginError(f'docs hooks: {path.relative_to(ROOT)} has no heading "{heading}"')
    return "".join(lines[start:]), level


def _shift_headings(text: str, by: int) -> str:
    out, fenced = [], False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            level = min(6, max(1, len(m.group(1)) - by))
            line = "#" * level + line[len(m.group(1)) :]
        out.append(line)
    return "".join(out)


def cli_help() -> str:
    """``qwen3guard --help`` and each command's, as Markdown (80 columns, as a terminal)."""
    import argparse
    import os

    from qwen3guard.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        parser = build_parser()
        parts = ["## `qwen3guard`\n\n```text\n" + parser.format_help() + "```\n"]
        for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    parts.append(f"## `qwen3guard {name}`\n\n```text\n{sub.format_help()}```\n")
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


_NESTED_ITEM = re.compile(r"^ {2,3}(?=(?:[-*+]|\d+[.)]) )")


def nest_lists(markdown: str) -> str:
    """Indent list items nested by two or three spaces by four (outside code fences)."""
    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        out.append(line if fenced else _NESTED_ITEM.sub("    ", line))
    return "".join(out)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    uri = page.file.src_uri
    if not uri.endswith(".md"):  # notebooks are mkdocs-jupyter's
        return markdown

    def include(m: re.Match[str]) -> str:
        path = (ROOT / m.group(1)).resolve()
        if not path.is_file():
            raise PluginError(f"docs hooks: {uri} includes {m.group(1)}, which does not exist")
        text, level = section(path, m.group(2))
        # the section's subheadings one level below the including page's title
        return rewrite_links(_shift_headings(text, level - 1), path, uri)

    markdown = _INCLUDE.sub(include, markdown)
    if _CLI_HELP in markdown:
        markdown = markdown.replace(_CLI_HELP, cli_help())
    if page.file.abs_src_path:
        markdown = rewrite_links(markdown, Path(page.file.abs_src_path), uri)
    return nest_lists(markdown)


_NOTEBOOK_NOTE = (
    '<div class="admonition note"><p class="admonition-title">A notebook, shown as stored</p>'
    "<p>The repository keeps the notebooks without outputs: this page shows the code and the "
    "text, and the tests execute every cell on the built-in small checkpoints. To see the "
    'outputs, <a href="{download}">download the notebook</a> and run it as the '
    '<a href="{index}">cookbook page</a> says.</p></div>'
)


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    name = posixpath.basename(page.file.src_uri)
    note = _NOTEBOOK_NOTE.format(download=name, index="../")
    head, sep, rest = html.partition("</h1>")
    return head + sep + note + rest if sep else note + html
