"""Build the sdists and wheels of the three packages, check them, and smoke-test the wheels.

    python scripts/check_wheels.py            # build, list each wheel's files, check
    python scripts/check_wheels.py --quiet    # only the verdict per wheel
    python scripts/check_wheels.py --smoke    # and install the wheels in a fresh venv and use them

Needs ``build`` and ``twine`` (in the dev extra); ``make wheels`` runs it with ``--quiet --smoke``
in CI. Each package is built with ``python -m build`` into a
temporary directory: the sdist first, then the wheel from the sdist, so no stale ``build/``
folder in the checkout can add files to the wheel, and the sdist is checked to build too. Exit 1 when a wheel holds a file that looks like test tooling: a ``tests`` or
``testing`` folder, a ``test_*.py`` or ``conftest.py`` file, or a server launcher (``launch.py``),
or when ``twine check`` finds a distribution's metadata wrong.

``--smoke`` installs the three wheels (not the checkout) with ``torch`` (``--torch``, default
``torch==2.13.0``: on this project's machines pip takes a CPU build of it from the local disk, as
the Makefile's install does; on an ordinary host that spec downloads a CUDA build, so pass e.g.
``--torch "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"``) into a new virtualenv and runs :data:`SMOKE` there, from a directory outside the
checkout: each package imports from the venv's site-packages, the built-in checkpoints load
(their package data is in the wheel), a Gen check blocks an unsafe prompt, and the LangChain
runnable and the LlamaIndex postprocessor each judge through the installed core.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [ROOT, ROOT / "integrations" / "langchain", ROOT / "integrations" / "llama-index"]
TEST_TOOLING = re.compile(
    r"(^|/)(tests?|testing|testsupport|support)/|(^|/)(test_[^/]*|[^/]*_test|conftest|launch)\.py$"
)


# Run by the fresh venv's python, in an empty directory: nothing of the checkout is importable.
SMOKE = r"""
import sys
import langchain_qwen3guard
import qwen3guard
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.qwen3guard import Qwen3GuardNodePostprocessor
from langchain_qwen3guard import Qwen3GuardRunnable
from qwen3guard import Qwen3Guard, Qwen3GuardViolation
from qwen3guard.tiny import ensure_built

import llama_index.postprocessor.qwen3guard as li_pkg
for module in (qwen3guard, langchain_qwen3guard, li_pkg):
    assert "site-packages" in module.__file__, module.__file__
tiny = ensure_built()
guard = Qwen3Guard.from_pretrained(str(tiny / "gen"), stream_model=str(tiny / "stream"))
assert guard.check_prompt("How can I make a bomb?").risk.value == "Unsafe"
assert guard.check_prompt("What is the weather like today?").risk.value == "Safe"
runnable = Qwen3GuardRunnable(guard=guard, role="prompt")
assert runnable.invoke("What is the weather like today?") == "What is the weather like today?"
try:
    runnable.invoke("How can I make a bomb?")
    raise SystemExit("the LangChain runnable let an unsafe prompt through")
except Qwen3GuardViolation:
    pass
nodes = [NodeWithScore(node=TextNode(text=t), score=1.0)
         for t in ("Paris is the capital of France.", "How can I make a bomb?")]
kept = Qwen3GuardNodePostprocessor(guard=guard).postprocess_nodes(nodes)
assert [n.node.get_content() for n in kept] == ["Paris is the capital of France."], kept
print("smoke: qwen3guard", qwen3guard.__version__, "langchain-qwen3guard",
      langchain_qwen3guard.__version__, "from", sys.prefix)
"""


def build_wheel(package: Path, outdir: Path) -> Path:
    before = set(outdir.glob("*.whl"))
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(outdir), str(package)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building {package} failed:\n{result.stdout[-3000:]}{result.stderr}")
    (wheel,) = set(outdir.glob("*.whl")) - before
    return wheel


def test_tooling_in(names: list[str]) -> list[str]:
    return [name for name in names if TEST_TOOLING.search(name)]


def twine_check(outdir: Path) -> bool:
    dists = sorted(str(p) for p in outdir.iterdir() if p.suffix in (".whl", ".gz"))
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *dists], capture_output=True, text=True
    )
    print(result.stdout.strip() or result.stderr.strip())
    return result.returncode == 0


def smoke(wheels: list[Path], torch_spec: str, workdir: Path) -> bool:
    """Install ``wheels`` into a new venv under ``workdir`` and run :data:`SMOKE` there."""
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-qq", "--progress-bar", "off"]
    pip += ["--disable-pip-version-check"]
    subprocess.run([*pip, *torch_spec.split()], check=True)
    core = next(w for w in wheels if w.name.startswith("qwen3guard-"))
    others = [str(w) for w in wheels if w != core]
    subprocess.run([*pip, f"qwen3guard[local] @ {core.as_uri()}", *others], check=True)
    empty = workdir / "run"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(python), "-c", SMOKE], cwd=empty, env=env)
    return result.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="do not list the files")
    parser.add_argument("--smoke", action="store_true", help="install the wheels in a new venv")
    parser.add_argument("--torch", default="torch==2.13.0", help="the torch to install (--smoke)")
    args = parser.parse_args(argv)

    failed = False
    wheels: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="qwen3guard-wheels-") as tmp:
        dist = Path(tmp) / "dist"
        dist.mkdir()
        for package in PACKAGES:
            wheel = build_wheel(package, dist)
            wheels.append(wheel)
            with zipfile.ZipFile(wheel) as zf:
                names = sorted(zf.namelist())
            if not args.quiet:
                print(f"== {wheel.name}")
                for name in names:
                    print("  ", name)
            bad = test_tooling_in(names)
            failed |= bool(bad)
            verdict = "test tooling: " + ", ".join(bad) if bad else "no test tooling"
            print(f"{wheel.name}: {len(names)} files, {verdict}")
        failed |= not twine_check(dist)
        if args.smoke and not failed:
            ok = smoke(wheels, args.torch, Path(tmp))
            print("wheel smoke test:", "passed" if ok else "FAILED")
            failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
