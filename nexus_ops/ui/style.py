"""The console's look: one style sheet, status lights, and small HTML helpers.

>>> light("running")
"<span class='nx-light nx-light-running' title='running'></span>"
"""

from __future__ import annotations

import html

import ipywidgets as widgets

# Colour of each server state's light (and of the agent's own).
LIGHTS = {
    "running": "#2e7d32",
    "starting": "#ef6c00",
    "backoff": "#ef6c00",
    "stopped": "#9e9e9e",
    "fatal": "#c62828",
    "unknown": "#9e9e9e",
    "connected": "#2e7d32",
    "lost": "#c62828",
}

CSS = (
    """
.nx-console { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif;
  max-width: 1400px; }
.nx-console .widget-html-content { line-height: 1.45; }
.nx-header { align-items: center; gap: 16px; padding: 4px 0 8px 0; }
.nx-title { font-size: 20px; font-weight: 600; white-space: nowrap; }
.nx-agent, .nx-updated { color: #555; }
.nx-demo { display: inline-block; padding: 2px 8px; border-radius: 4px; font-weight: 700;
  letter-spacing: 0.08em; background: #b45309; color: #fff; }
.nx-demo-note { margin-left: 8px; color: #92400e; white-space: nowrap; }
@media (max-width: 600px) { .nx-demo-note { display: none; } }
.nx-light { display: inline-block; width: 12px; height: 12px; border-radius: 50%;
  margin-right: 6px; vertical-align: middle; }
"""
    + "".join(f".nx-light-{state} {{ background: {color}; }}\n" for state, color in LIGHTS.items())
    + """
.nx-banner .nx-banner-error { background: #fdecea; border-left: 4px solid #c62828;
  padding: 8px 12px; margin: 4px 0; color: #611a15; }
.nx-banner .nx-banner-info { background: #e8f0fe; border-left: 4px solid #1565c0;
  padding: 8px 12px; margin: 4px 0; }
.nx-banner .nx-banner-busy { background: #fff4e5; border-left: 4px solid #ef6c00;
  padding: 8px 12px; margin: 4px 0; }
.nx-banner .nx-banner-ok { background: #edf7ed; border-left: 4px solid #2e7d32;
  padding: 8px 12px; margin: 4px 0; }
.nx-hint { margin-top: 4px; }
.nx-table { border-collapse: collapse; font-size: 13px; width: 100%; }
.nx-table th { text-align: left; border-bottom: 2px solid #ccc; padding: 4px 8px; }
.nx-table td { border-bottom: 1px solid #eee; padding: 3px 8px; vertical-align: top; }
.nx-details td:first-child { color: #555; width: 150px; }
.nx-state-text { font-size: 18px; font-weight: 600; }
.nx-event-restart td { background: #fff4e5; }
.nx-event-crash td { background: #fdecea; font-weight: 600; }
.nx-log-view { display: flex; flex-direction: column-reverse; overflow: auto;
  max-height: 560px; border: 1px solid #ddd; background: #fafafa; }
.nx-log-view pre { margin: 0; padding: 6px 8px; font-size: 12px; white-space: pre-wrap;
  word-break: break-all; }
/* Errors and warnings stand out (dark enough on the view's grey for 4.5:1 contrast). */
.nx-log-error { color: #b71c1c; font-weight: 600; }
.nx-log-warning { color: #8a4b00; }
/* Read by screen readers, not shown. */
.nx-sr { position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px;
  overflow: hidden; clip: rect(0, 0, 0, 0); white-space: nowrap; border: 0; }
.nx-start-hint { background: #e8f0fe; border-left: 4px solid #1565c0; padding: 6px 10px;
  margin: 6px 0; }
.nx-confirm { background: #fff4e5; padding: 6px 10px; align-items: center; gap: 8px; }
.nx-password code, .nx-url code { font-size: 13px; }
.nx-commands code { font-size: 12px; white-space: pre-wrap; word-break: break-all; }
.nx-no-webhooks p { margin: 4px 0; }
.nx-no-webhooks .nx-example { display: block; margin: 4px 0; padding: 4px 8px; color: #222;
  background: #f3f4f6; font-size: 12px; white-space: pre-wrap; word-break: break-all; }
.nx-commands > div { margin: 2px 0 6px; }
.nx-qr svg { display: block; }
/* A figure takes its box's width (Plotly's autosize reads the element's own width; as
   a flex item it would otherwise keep the 700 px it was first drawn at, and overflow
   a narrow page: a phone, a JupyterLab output). */
.nx-figure, .nx-usage-days { flex: 1 1 auto; width: 100%; min-width: 0; }
.nx-section { font-weight: 600; margin-top: 10px; }
.nx-muted { color: #777; }
/* A stat is one number: Plotly's toolbar would only cover its title. */
.nx-stat .modebar-container { display: none; }
.nx-table td { overflow-wrap: anywhere; }
/* The short columns of the recent runs and of the alert rules keep their words whole
   (not "succeed|ed", "inactiv|e"). */
@media (min-width: 701px) {
  .nx-runs-table td:nth-child(-n+3), .nx-runs-table td:nth-child(n+5):nth-child(-n+7),
  .nx-alerts-table td:nth-child(-n+5) {
    overflow-wrap: normal; white-space: nowrap; }
}
/* A widget 100% wide keeps its margins: without them it fits. */
.nx-console .nx-panel .widget-inline-hbox {
  max-width: calc(100% - 2 * var(--jp-widgets-margin, 2px)); }
/* A phone: the tabs wrap onto two rows, each as wide as its title; rows of controls
   wrap; a table with a header becomes one card a row, each cell under its column's
   name; nothing is wider than the page. */
@media (max-width: 700px) {
  .nx-tabs > .lm-TabBar { height: auto; max-height: none; }
  .nx-tabs > .lm-TabBar .lm-TabBar-content { flex-wrap: wrap; }
  .nx-tabs > .lm-TabBar .lm-TabBar-tab { flex: 0 0 auto; }
  .nx-console .widget-hbox { flex-wrap: wrap; row-gap: 4px; }
  .nx-console .nx-panel .widget-box { min-width: 0 !important; max-width: 100%; }
  .nx-console .nx-panel .widget-box:not(.nx-figure) { padding-left: 0 !important; }
  .nx-console .nx-panel .widget-inline-hbox input { min-width: 0; }
  .nx-range .widget-toggle-button { width: auto !important; padding: 0 10px; }
  .nx-columns > .widget-box { flex: 1 1 100% !important; }
  .nx-url code, .nx-password code { overflow-wrap: anywhere; word-break: break-all; }
  .nx-password { flex: 1 1 160px; }
  .nx-range { flex-wrap: nowrap !important; }
  .nx-table.nx-cards, .nx-cards tbody, .nx-cards tr, .nx-cards td { display: block; }
  .nx-cards thead { display: none; }
  .nx-cards tr { border-bottom: 1px solid #ccc; padding: 4px 0; }
  .nx-cards td { border: none; padding: 1px 8px; }
  .nx-cards td[data-label]::before { content: attr(data-label) ": "; color: #555;
    font-weight: 600; }
  .nx-show-password { flex: 0 0 auto !important; }
}
"""
)


def style_widget() -> widgets.HTML:
    """The style sheet, as a widget placed once at the top of the console."""
    sheet = widgets.HTML(f"<style>{CSS}</style>", layout=widgets.Layout(display="none"))
    sheet.add_class("nx-style")
    return sheet


def light(state: str) -> str:
    """A coloured dot for ``state`` (a server state, ``connected`` or ``lost``)."""
    known = state if state in LIGHTS else "unknown"
    return f"<span class='nx-light nx-light-{known}' title='{html.escape(state)}'></span>"


def esc(value: object) -> str:
    """``value`` as safe HTML text ("-" for None)."""
    return "-" if value is None else html.escape(str(value))
