"""Real Chromium for the console's tests: how it is launched, and what a page is checked for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conftest import ARTIFACTS

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ARTIFACTS / "console"

# Every figure of the Metrics tab holds a drawn line with points.
FIGURES_HAVE_DATA = """
() => {
  const figures = [...document.querySelectorAll('.nx-figure')];
  if (figures.length < 9) return false;
  return figures.every((f) => {
    const gd = f.classList.contains('js-plotly-plot') ? f : f.querySelector('.js-plotly-plot');
    return gd && gd.data && gd.data.some(
      (t) => t.name !== 'restarts and crashes' && t.y && t.y.length > 0);
  });
}
"""

# Two time series side by side, each filling its half of the Metrics tab.
FIGURES_FILL_THEIR_BOXES = """
() => {
  const plots = [...document.querySelectorAll('.nx-timeseries .main-svg')];
  const box = document.querySelector('.nx-metrics').getBoundingClientRect().width;
  return plots.length > 0 && plots.every((svg) => {
    const width = svg.getBoundingClientRect().width;
    return width > box * 0.4 && width < box * 0.55;
  });
}
"""

# One time series a row, as wide as the Metrics tab, none cut off (a phone's page).
FIGURES_STACK_IN_ONE_COLUMN = """
() => {
  const plots = [...document.querySelectorAll('.nx-timeseries .main-svg')];
  const box = document.querySelector('.nx-metrics').getBoundingClientRect();
  return plots.length > 0 && plots.every((svg) => {
    const r = svg.getBoundingClientRect();
    return r.width > box.width * 0.9 && r.right <= box.right + 1;
  });
}
"""

# What is cut off or scrolls sideways: the page wider than the window, an element
# past the window's right edge, a box (table, panel, text) whose content is wider
# than itself; each named by its tag, classes and first words (none of the Server
# tab's connection box, which may show the password).
OVERFLOWING = """
() => {
  const text = (e) => (e.closest('.nx-connection') ? '' : e.textContent.trim().slice(0, 30));
  const name = (e) => [e.tagName.toLowerCase(), ...e.classList].join('.')
    + (text(e) ? ` "${text(e)}"` : '');  // the password's text never in a message
  const found = [];
  const page = document.documentElement;
  if (page.scrollWidth > innerWidth) found.push(`the page: ${page.scrollWidth} px wide`);
  for (const e of document.querySelectorAll('.nx-console *')) {
    if (!e.offsetParent || e.closest('.nx-sr')) continue;  // .nx-sr: for screen readers only
    const right = e.getBoundingClientRect().right;
    if (right > innerWidth + 1) found.push(`${name(e)} ends at ${Math.round(right)} px`);
    else if (e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0
             && getComputedStyle(e).overflowX !== 'visible')
      found.push(`${name(e)}: ${e.scrollWidth} px in ${e.clientWidth} px`);
  }
  return found.slice(0, 10);
}
"""


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def check_on_a_phone(page: Page, name: str, selector: str) -> None:
    """At a phone's width (412 px) ``selector`` shows and nothing is cut off; a screenshot."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 412, "height": 915})
    expect(page.locator(selector)).to_be_visible()
    try:  # the widgets lay themselves out again after the resize
        page.wait_for_function(f"() => ({OVERFLOWING})().length === 0", timeout=10_000)
    except PlaywrightTimeout:
        found = page.evaluate(OVERFLOWING)
        shot(page, name)
        raise AssertionError(f"cut off or scrolling sideways at 412 px: {found}") from None
    shot(page, name)
