"""Live refresh that never blocks the page, and stops when nobody looks.

:class:`PageWatch` is an invisible widget whose view sends a heartbeat every few
seconds while its page is open and visible. :class:`Refresher` runs the console's
refresh in a daemon thread of the kernel, only while heartbeats arrive: a closed
page (or a kernel pre-heated by Voila that no page has taken yet) costs no
requests to the agent, and its kernel stays idle so that Voila's culler can shut
it down. Kernel shutdown ends the thread with the process.

>>> watch = PageWatch(beat_every=5)
>>> watch.alive(now=0.0)
False
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

log = logging.getLogger(__name__)

_HEARTBEAT_ESM = """
function render({ model, el }) {
  el.style.display = "none";
  const beat = () => {
    if (document.visibilityState === "visible") model.send({ beat: Date.now() });
  };
  beat();
  const every = Math.max(1, model.get("beat_every")) * 1000;
  const timer = setInterval(beat, every);
  document.addEventListener("visibilitychange", beat);
  // Plotly redraws responsive figures at their box's size on a window resize: sent
  // when a figure is first drawn (it is drawn 700 px wide) and when a tab is opened.
  let pending = null;
  const resize = () => {
    clearTimeout(pending);
    pending = setTimeout(() => window.dispatchEvent(new Event("resize")), 100);
  };
  const drawn = new WeakSet();
  const watcher = new MutationObserver(() => {
    let fresh = false;
    for (const plot of document.querySelectorAll(".nx-console .js-plotly-plot")) {
      if (!drawn.has(plot) && plot.querySelector(".main-svg")) {
        drawn.add(plot);
        fresh = true;
      }
    }
    if (fresh) resize();
  });
  watcher.observe(document.body, { childList: true, subtree: true });
  model.on("change:nudge", resize);
  return () => {
    clearInterval(timer);
    document.removeEventListener("visibilitychange", beat);
    model.off("change:nudge", resize);
    watcher.disconnect();
  };
}
export default { render };
"""


class PageWatch(anywidget.AnyWidget):
    """Knows whether a page shows the console: heartbeats from every view of it.

    >>> watch = PageWatch(); watch.beat(now=100.0); watch.alive(now=110.0)
    True
    """

    _esm = _HEARTBEAT_ESM
    beat_every = traitlets.Float(5.0).tag(sync=True)
    nudge = traitlets.Int(0).tag(sync=True)

    def __init__(self, beat_every: float = 5.0, **kwargs: Any) -> None:
        super().__init__(beat_every=beat_every, **kwargs)
        self.last_beat: float | None = None
        self.listeners: list[Callable[[], None]] = []
        self.add_class("nx-page-watch")
        self.on_msg(self._on_msg)

    def _on_msg(self, _widget: object, content: object, _buffers: object) -> None:
        if isinstance(content, dict) and "beat" in content:
            self.beat()

    def beat(self, now: float | None = None) -> None:
        """A page showed the console just now."""
        first = self.last_beat is None
        self.last_beat = time.monotonic() if now is None else now
        if first:
            for listener in self.listeners:
                listener()

    def resize_figures(self) -> None:
        """Make the page redraw its figures at their boxes' sizes (a tab was opened)."""
        self.nudge += 1

    def alive(self, now: float | None = None) -> bool:
        """A heartbeat arrived within the last few beats (a page is open and visible)."""
        if self.last_beat is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self.last_beat <= max(3 * self.beat_every, 15.0)


class Refresher:
    """Calls ``tick`` every ``interval`` seconds in a daemon thread while ``watched()``.

    ``wake()`` runs a tick at once (a heartbeat after a pause, a new tab selected).
    """

    def __init__(
        self,
        tick: Callable[[], None],
        interval: float,
        watched: Callable[[], bool] = lambda: True,
    ) -> None:
        self.tick = tick
        self.interval = interval
        self.watched = watched
        self.ticks = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Refresher:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="nexus-console-live", daemon=True
            )
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.watched():
                try:
                    self.tick()
                except Exception:  # a tick reports its own errors; this keeps the loop alive
                    log.exception("console: a refresh failed")
                self.ticks += 1
            self._wake.wait(self.interval)
            self._wake.clear()
