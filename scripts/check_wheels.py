"""Build the wheels of the three packages and check that none carries test tooling.

    python scripts/check_wheels.py            # build, list each wheel's files, check
    python scripts/check_wheels.py --quiet    # only the verdict per wheel

Needs ``build`` (in the dev extra). Each package is built with ``python -m build`` into a
temporary directory: the sdist first, then the wheel from the sdist, so no stale ``build/``
folder in the checkout can add files to the wheel, and the sdist is checked to build too. Exit 1 when a wheel holds a file that looks like test tooling: a ``tests`` or
``testing`` folder, a ``test_*.py`` or ``conftest.py`` file, or a server launcher (``launch.py``).
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="do not list the files")
    args = parser.parse_args(argv)

    failed = False
    with tempfile.TemporaryDirectory(prefix="qwen3guard-wheels-") as tmp:
        for package in PACKAGES:
            wheel = build_wheel(package, Path(tmp))
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
