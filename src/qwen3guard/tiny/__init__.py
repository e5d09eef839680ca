"""The built-in small checkpoints: a Qwen3Guard-Gen and a Qwen3Guard-Stream checkpoint in the
official formats, tiny Qwen3 models trained on one CPU thread (about 50 s of CPU time, once per
machine; a progress bar per stage) so that they answer in the real output format. Tests,
notebooks and the demo use them offline; real checkpoints load through exactly the same code.

    qwen3guard tiny build DIR        # DIR/gen and DIR/stream, deterministic from the seed
    ensure_built()                   # a cached build, made once per machine
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .progress import Progress

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent


def source_hash() -> str:
    """A hash of the builder's own sources: a change to them means a new build."""
    h = hashlib.sha256()
    # The Stream checkpoint is written through the model class, so its module counts too.
    sources = [*sorted(_HERE.glob("*")), _HERE.parent / "stream" / "modeling.py"]
    for path in sources:
        if path.suffix in (".py", ".jinja", ".json") and path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build(out_dir: str | os.PathLike[str], seed: int = 0, progress: Progress | None = None
          ) -> Path:
    """Write ``out_dir/gen`` and ``out_dir/stream``. ``progress(stage, done, total)``, when
    given, hears of every training step and self-check of each stage (the command line draws
    a bar per stage); it does not change what is built.

    Training runs on one intra-op thread: float sums reduced over a different number of threads
    round differently, so the same seed would give other weights on a machine (or under an
    ``OMP_NUM_THREADS``) with another thread count, and a cached build could not be reproduced."""
    import torch

    from .gen import save_gen, train_gen
    from .stream_build import build_stream
    from .tokenizer import build_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = build_tokenizer(seed)
        torch.manual_seed(seed)
        save_gen(train_gen(tok, seed, progress=progress), tok, out / "gen")
        build_stream(tok, out / "stream", seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)
    (out / "BUILD").write_text(f"seed={seed}\nsource={source_hash()}\nthreads=1\n")
    return out


def default_dir() -> Path:
    env = os.environ.get("QWEN3GUARD_TINY_DIR")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "qwen3guard" / "tiny" / source_hash()


@contextlib.contextmanager
def _locked(lock: IO[str]) -> Iterator[None]:
    """An exclusive lock on an open file, across processes. ``fcntl`` is POSIX-only, so it is
    imported here, not at module import; on Windows ``msvcrt.locking`` takes its place."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        while True:
            try:
                msvcrt.locking(lock.fileno(), msvcrt.LK_LOCK, 1)
                break
            except OSError:  # LK_LOCK gives up after ~10 s: keep waiting for the builder
                continue
        try:
            yield
        finally:
            lock.seek(0)
            msvcrt.locking(lock.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_built(path: str | os.PathLike[str] | None = None, progress: Progress | None = None
                 ) -> Path:
    """The built checkpoints at ``path`` (default: a per-machine cache keyed by the builder's
    source), built once if missing (``progress`` as for :func:`build`). Safe against concurrent
    callers (a lock file, and the build is moved into place only when complete)."""
    target = Path(path) if path is not None else default_dir()
    if (target / "BUILD").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock, _locked(lock):
        if (target / "BUILD").exists():
            return target
        log.warning("building the built-in small checkpoints into %s (once)", target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp, progress=progress)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
    return target


__all__ = ["Progress", "build", "default_dir", "ensure_built", "source_hash"]
