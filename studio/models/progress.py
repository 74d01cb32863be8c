"""A hub download's progress, from huggingface_hub's own progress bars: `snapshot_download(tqdm_class=...)` makes its
bars from the class given (the bytes written, "Reconstructing", with the total of the files' sizes; the bytes
received; and the files done), so a tqdm subclass that records them is all the hook there is. `DownloadWatch` is
that record; its `state()` is what the Train tab shows (bytes, total, rate, ETA, files)."""
from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass


@dataclass
class DownloadState:
    done_bytes: int = 0
    total_bytes: int = 0          # 0 while the file sizes are not known yet
    files_done: int = 0
    files_total: int = 0
    elapsed_s: float = 0.0
    finished: bool = False

    @property
    def rate(self) -> float:
        """Bytes per second since the download started."""
        return self.done_bytes / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.total_bytes or self.rate <= 0 or self.finished:
            return None
        return max(0.0, (self.total_bytes - self.done_bytes) / self.rate)

    def line(self) -> str:
        """One sentence: '412.3 MB of 988.1 MB (41%), 21.5 MB/s, about 27 s left; 3 of 9 files'."""
        from .catalog import human_bytes
        got = human_bytes(self.done_bytes)
        if self.total_bytes:
            got += f" of {human_bytes(self.total_bytes)} ({100 * self.done_bytes / self.total_bytes:.0f}%)"
        parts = [got]
        if self.rate > 0:
            parts.append(f"{human_bytes(int(self.rate))}/s")
        if self.eta_s is not None:
            parts.append(f"about {_duration(self.eta_s)} left")
        files = f"; {self.files_done} of {self.files_total} files" if self.files_total else ""
        return ("Downloaded " if self.finished else "Downloading ") + ", ".join(parts) + files


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class DownloadWatch:
    """Collects the state of every bar huggingface_hub opens for one download (from any of its worker threads)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.start = clock()
        self.bars: list = []
        self.finished = False
        self.lock = threading.Lock()

    def tqdm_class(self):
        """A tqdm class bound to this watch, for snapshot_download(tqdm_class=...). Its bars draw into a string
        buffer, never the terminal; tqdm itself keeps n and total, which state() reads."""
        from tqdm.auto import tqdm
        watch = self

        class WatchedTqdm(tqdm):
            def __init__(self, *args, **kwargs):
                kwargs.pop("name", None)  # huggingface_hub's own bar class takes a name; tqdm does not
                kwargs["file"] = io.StringIO()
                kwargs["disable"] = False  # a disabled tqdm stops counting: keep it on, drawn into the buffer
                super().__init__(*args, **kwargs)
                with watch.lock:
                    watch.bars.append(self)

        return WatchedTqdm

    def state(self) -> DownloadState:
        with self.lock:
            bars = list(self.bars)
        # bytes: the byte bar furthest along, the files written ("Reconstructing": its total is the sum of the files'
        # sizes); the bytes-received bar of a Xet download counts less (dedup) and grows its total by 1.25x as it
        # goes, so on a tie the smaller total wins. files: the bar counted in items (the thread_map over the files)
        byte_bars = [b for b in bars if getattr(b, "unit", "") == "B"]
        file_bars = [b for b in bars if getattr(b, "unit", "") != "B"]
        st = DownloadState(elapsed_s=self.clock() - self.start, finished=self.finished)
        if byte_bars:
            main = max(byte_bars, key=lambda b: (b.n, -(b.total or 0)))
            st.done_bytes, st.total_bytes = int(main.n), int(main.total or 0)
        if file_bars:
            st.files_done, st.files_total = int(file_bars[0].n), int(file_bars[0].total or 0)
        return st
