"""The pairing page: plain HTML, no scripts, served by the agent under ``/_nexus/``.

>>> "K7PQ-XM3A" in pair_page(code="K7PQ-XM3A")
True
>>> "&lt;b&gt;" in pair_page(message="<b>")
True
"""

from __future__ import annotations

from html import escape

# Nothing runs, nothing loads from elsewhere, no page may frame it, forms post only here.
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:26rem;margin:2rem auto;padding:0 1rem;"
    "color:#1f2933}h1{font-size:1.4rem}label{display:block;margin:1rem 0 .3rem}"
    "input{font-size:1.2rem;width:100%;padding:.5rem;box-sizing:border-box}"
    "input.code{letter-spacing:.2em;text-transform:uppercase}"
    "button{margin-top:1.2rem;font-size:1.1rem;padding:.6rem 1.2rem}"
    ".error{background:#fde8e8;border-left:4px solid #c81e1e;padding:.6rem}"
    ".note{color:#52606d;font-size:.9rem}"
)


def pair_page(code: str = "", next_path: str = "/", message: str = "", hint: str = "") -> str:
    """The form: code and device name (a code from the link fills it in)."""
    error = ""
    if message:
        extra = f"<br>{escape(hint)}" if hint else ""
        error = f"<p class='error' role='alert'>{escape(message)}{extra}</p>"
    return _page(
        "Pair this device",
        f"{error}<form method='post' action='/_nexus/pair'>"
        "<label for='code'>Pairing code</label>"
        f"<input id='code' class='code' name='code' value='{escape(code)}' required "
        "autocomplete='one-time-code' autocapitalize='characters' maxlength='12' "
        "placeholder='XXXX-XXXX'>"
        "<label for='name'>Name of this device</label>"
        "<input id='name' name='name' maxlength='60' placeholder='e.g. my phone'>"
        f"<input type='hidden' name='next' value='{escape(next_path)}'>"
        "<button type='submit'>Pair</button></form>"
        "<p class='note'>Get a code on the host with <code>nexus-ops pair</code> or the "
        "console's <b>Pair a device</b>. A code works once, for a few minutes.</p>",
    )


def logged_out_page() -> str:
    return _page(
        "Logged out",
        "<p>This device's session has ended.</p>"
        "<p><a href='/_nexus/pair'>Pair it again</a> with a new code.</p>",
    )


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)} - nexus-ops</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
