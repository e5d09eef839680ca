"""Progress of a build, for a callback ``progress(stage, done, total)`` (the command line draws
a bar per stage). Reporting never touches the random generators or the tensors: a build that
reports writes the same weights as one that does not."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]


class Stage:
    """Counts the steps of one build stage and tells ``progress`` of each (announced with
    ``done=0`` when it starts)."""

    def __init__(self, progress: Progress | None, name: str,
                 total: int) -> None:
        self.progress, self.name, self.total, self.done = progress, name, max(1, total), 0
        if progress is not None:
            progress(name, 0, self.total)

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.name, min(self.done, self.total), self.total)
