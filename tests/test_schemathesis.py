"""Schemathesis against the agent's own OpenAPI document: no server error, no response
that breaks its schema, on every operation (the app in-process, through ASGI, with the
bearer token)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from conftest import private_env
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from nexus_ops.agent import VALIDATION_HINT, create_app
from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.errors import AgentError
from nexus_ops.paths import Layout

HEADERS: dict[str, str] = {}
# Valid requests the agent refuses on purpose here, with a documented status:
# - start and restart: this app has no OpenCode binary, so 424 (the point is not to spawn);
# - a metric query's times are free text checked by the agent (400 says which is wrong).
OVERRIDES = [
    {
        "include-path-regex": "^/api/v1/server/(start|restart)$",
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "424"]}},
    },
    # - the entry's paths: no device session is valid (302/401), no code right (400/429).
    {
        "include-path-regex": "^/(entry/check|_nexus/pair)$",
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", "4xx"]}},
    },
    {
        "include-path-regex": "^/api/v1/metrics/quer(y|ies)$",
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400"]}},
    },
]


@pytest.fixture(scope="module")
def api_schema() -> Iterator[schemathesis.BaseSchema]:
    """The agent's app (no supervision; a missing OpenCode binary, so nothing is spawned)."""
    root = Path(tempfile.mkdtemp(prefix="nexus-ops-schemathesis-"))
    # schemathesis calls the app as http://testserver: a name the agent is told to answer.
    extra = {
        "NEXUS_OPENCODE_BIN": str(root / "no-opencode-here"),
        "NEXUS_ALLOWED_HOSTS": "testserver",
    }
    env = private_env(root, extra)
    with pytest.MonkeyPatch.context() as patch:
        for name in (
            "HOME",
            "XDG_DATA_HOME",
            "XDG_CONFIG_HOME",
            "XDG_CACHE_HOME",
            "XDG_STATE_HOME",
        ):
            patch.setenv(name, env[name])  # the app backs up this OpenCode, not the host's
        patch.chdir(root)
        app = create_app(load_settings(env), manage=False)
        token = Layout(Path(env["NEXUS_HOME"])).agent_token_file.read_text().strip()
        HEADERS["Authorization"] = f"Bearer {token}"
        # The token as the schema's own HTTPBearer scheme: schemathesis sends it, and also
        # tries requests without it, which must get 401.
        config = schemathesis.Config.from_dict(
            {"auth": {"openapi": {"HTTPBearer": {"bearer": token}}}, "operations": OVERRIDES}
        )
        yield schemathesis.openapi.from_asgi(
            "/api/v1/openapi.json", app, config=config, headers=HEADERS
        )
    asgi.shutdown_lifespans()  # the app's lifespan ends before its folder goes
    shutil.rmtree(root, ignore_errors=True)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_keeps_its_schema(case: schemathesis.Case) -> None:
    # /ready answers 503 by design while the server is down (orchestrators read it); the
    # 503 is documented, so its status and body are still checked against the schema.
    excluded = [not_a_server_error] if case.path == "/ready" else []
    case.call_and_validate(excluded_checks=excluded)


@pytest.fixture
def agent_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentClient]:
    env = private_env(tmp_path)
    for name in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, env[name])
    settings = load_settings(env)
    app = create_app(settings, manage=False)
    token = Layout(settings.home).agent_token_file.read_text().strip()
    with TestClient(app, base_url="http://127.0.0.1") as http:
        yield AgentClient("http://127.0.0.1", token, transport=http._transport)  # type: ignore[attr-defined]


def test_the_faults_schemathesis_found_now_answer_clearly(agent_client: AgentClient) -> None:
    with pytest.raises(AgentError) as bad:
        agent_client.events(limit=0)
    assert bad.value.status == 422
    assert bad.value.message == "limit='0': Input should be greater than or equal to 1"
    assert bad.value.hint == VALIDATION_HINT
    with pytest.raises(AgentError) as missing:
        agent_client.json("GET", "/api/v1/backups/20990101T000000Z-none")
    assert missing.value.status == 404 and "there is no backup" in missing.value.message
    with pytest.raises(AgentError) as unknown:
        agent_client.json("GET", "/api/v1/runs/nope")
    assert unknown.value.status == 404
    response = agent_client._http.post(
        "/api/v1/backups", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422  # FastAPI's JSON decode error, its documented 422
    assert response.json()["error"].startswith("the body is not JSON")
    not_found = agent_client._http.get("/api/v1/no-such-route")
    assert not_found.status_code == 404
    assert not_found.json() == {"error": "Not Found", "hint": None}
    for body in ({"include_nexus": 0}, {"include_nexus": True, "extra": 1}):
        with pytest.raises(AgentError) as strict:
            agent_client.json("POST", "/api/v1/backups", json=body)
        assert strict.value.status == 422
    options = agent_client._http.options("/api/v1/backups")
    assert options.status_code == 405
    assert options.headers["allow"] == "GET, POST"
