"""The console's login page: a missing or wrong token gets nexus-ops' page, not Jupyter's.

It says where the token is and what prints the console's URL, never shows a token
(neither the console's nor one typed or carried by the link), and the token typed
into its form logs in.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import jinja2
import pytest
from conftest import kill_everything_of
from playwright.sync_api import Browser
from test_console_e2e import LOAD, Served, console_env, serve

from nexus_ops.config import load_settings
from nexus_ops.console import ConsoleOptions, token_file, voila_config
from nexus_ops.console_voila import LOGIN_PAGE, TEMPLATES, without_token

WRONG = "Wr0ngT0kenWr0ngT0kenWr0ngT0ken12"
JUPYTER_TEXT = ("jupyter server list", "Setup a Password", "Token authentication is enabled")


@pytest.fixture(scope="module")
def served(opencode_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = console_env(tmp_path_factory.mktemp("login"), opencode_bin)
    running = serve(env)
    yield running
    running.process.send_signal(signal.SIGINT)
    running.process.wait(timeout=60)
    kill_everything_of(env)


def token_of(served: Served) -> str:
    return served.url.split("token=", 1)[1]


def assert_nexus_login(page: httpx.Response, served: Served) -> None:
    """nexus-ops' page, with the token file and the command, holding no token."""
    assert '<h1 class="nx-title">nexus-ops console</h1>' in page.text
    assert str(token_file(served.settings)).replace("/", "/<wbr>") in page.text
    assert '<code class="nx-command">nexus-ops console</code>' in page.text
    assert 'id="password_input"' in page.text and 'name="password"' in page.text
    for text in JUPYTER_TEXT:
        assert text not in page.text
    assert WRONG not in page.text and token_of(served) not in page.text


def xsrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert found, "the login form has no _xsrf field"
    return found[1]


def test_a_wrong_token_in_the_link_gets_the_console_login_page(served: Served) -> None:
    page = httpx.get(f"{served.base}/?token={WRONG}", follow_redirects=True, timeout=60)
    assert page.status_code == 200 and page.url.path == "/console/login"
    assert_nexus_login(page, served)
    assert "That token is not this console's." in page.text
    assert not [name for name in page.cookies if name.startswith("username-")], "no login"


def test_no_token_gets_the_page_without_an_error(served: Served) -> None:
    page = httpx.get(f"{served.base}/", follow_redirects=True, timeout=60)
    assert page.url.path == "/console/login"
    assert_nexus_login(page, served)
    assert "locked by a token" in page.text and 'role="alert"' not in page.text


def test_the_link_to_come_back_to_loses_its_token(served: Served) -> None:
    page = httpx.get(
        f"{served.base}/login",
        params={"next": f"/console/voila/render?token={WRONG}&x=1"},
        timeout=60,
    )
    assert 'action="/console/login?next=%2Fconsole%2Fvoila%2Frender%3Fx%3D1"' in page.text
    assert WRONG not in page.text


def test_a_wrong_token_in_the_form_says_so(served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=60) as browser:
        form = browser.get("/login")
        answer = browser.post("/login", data={"_xsrf": xsrf_of(form), "password": WRONG})
        assert answer.status_code == 401
        assert_nexus_login(answer, served)
        assert "That token is not this console's." in answer.text
        empty = browser.post("/login", data={"_xsrf": xsrf_of(form), "password": ""})
        assert empty.status_code == 401 and "No token was entered." in empty.text


def test_the_right_token_in_the_form_logs_in(served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=120) as browser:
        form = browser.get("/login?next=%2Fconsole%2F")
        answer = browser.post(
            "/login?next=%2Fconsole%2F",
            data={"_xsrf": xsrf_of(form), "password": token_of(served)},
        )
        assert answer.status_code == 302 and answer.headers["location"] == "/console/"
        assert any(name.startswith("username-") for name in answer.cookies), answer.cookies
        console = browser.get("/")
        assert console.status_code == 200 and console.url.path == "/console/"
        assert "nx-" in console.text and "password_input" not in console.text


def render(**values: object) -> str:
    loader = jinja2.FileSystemLoader(TEMPLATES / "voila")
    page = jinja2.Environment(loader=loader, autoescape=True).get_template(LOGIN_PAGE)
    base = {"base_url": "/", "next": "/", "xsrf_form_html": lambda: "", "state": "missing"}
    return page.render(**{**base, **values})


def test_a_console_beyond_loopback_does_not_show_the_users_folders(tmp_path: Path) -> None:
    settings = load_settings({"NEXUS_HOME": str(tmp_path)})
    remote = voila_config(settings, ConsoleOptions(), "0.0.0.0", 8866, "t")
    local = voila_config(settings, ConsoleOptions(), "127.0.0.1", 8866, "t")
    assert remote["ConsoleVoila"]["token_file"] == ""
    assert local["ConsoleVoila"]["token_file"] == str(token_file(settings))
    page = render(token_file="", token_given=False)
    assert "$NEXUS_HOME/<wbr>secrets/<wbr>console.token" in page and str(tmp_path) not in page
    odd = render(token_file="/tmp/<b>home/console.token", token_given=False)
    assert "/<wbr>&lt;b&gt;home/<wbr>console.token" in odd, "a path is text, not HTML"


def test_a_token_given_on_the_command_line_is_not_looked_for_in_the_file() -> None:
    page = render(token_file="/somewhere/console.token", token_given=True)
    assert "--token" in page and "/somewhere/console.token" not in page
    assert "nx-command" not in page, "nexus-ops console would print the file's token"
    assert without_token("/?token=a&b=2&token=c") == "/?b=2"


def test_a_browser_logs_in_with_the_form(served: Served, browser: Browser) -> None:
    """What a browser sends (its Origin header above all) passes Jupyter's checks."""
    page = browser.new_page(viewport={"width": 412, "height": 915})
    try:
        page.goto(f"{served.base}/?token={WRONG}")
        page.fill("#password_input", token_of(served))
        page.click("#login_submit")
        page.wait_for_selector(".nx-console", timeout=LOAD)
        assert page.url == f"{served.base}/"
    finally:
        page.close()
