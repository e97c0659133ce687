"""Progress bars for long work: one tqdm bar per stage, fed by the library's progress callbacks."""

from __future__ import annotations

from tqdm import tqdm


class StageBars:
    """A `progress(stage, done, total)` callable that draws one bar per stage on stderr."""

    def __init__(self) -> None:
        self._bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(
                total=total, desc=stage, leave=False, dynamic_ncols=True, disable=None
            )
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
