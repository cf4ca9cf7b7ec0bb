"""The workload: the scripted model provider's wire format, the real OpenCode driven by
it, and the workload driver measuring that server."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from backup_helpers import DirectServer, install_config
from conftest import kill_everything_of, private_env, wait_for

from nexus_ops.errors import ConfigError, OpenCodeUnavailable
from nexus_ops.opencode import Credentials
from nexus_ops.workload.config import write_provider_config
from nexus_ops.workload.driver import FirstTokens, PromptResult, WorkloadResult, run_workload
from nexus_ops.workload.provider import ScriptedProvider
from nexus_ops.workload.script import (
    HttpError,
    Reply,
    Rule,
    Script,
    Stall,
    bash,
    load_script,
    parse_script,
    write,
)

USER = [{"role": "user", "content": "hello there"}]


def chat(provider: ScriptedProvider, stream: bool, messages: object = USER) -> httpx.Response:
    body = {"model": "m1", "messages": messages, "stream": stream}
    return httpx.post(f"{provider.base_url}/chat/completions", json=body, timeout=10)


def events(response: httpx.Response) -> list[object]:
    """The ``data:`` payloads of an SSE body, JSON-decoded but for ``[DONE]``."""
    found: list[object] = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            found.append(data if data == "[DONE]" else json.loads(data))
    return found


def test_streams_a_reply_in_chunks_then_usage_then_done() -> None:
    script = Script(rules=[Rule(when="hello", then=Reply(text="Hi from the script"))])
    with ScriptedProvider(script) as provider:
        response = chat(provider, stream=True)
    assert response.headers["content-type"] == "text/event-stream"
    chunks = events(response)
    assert chunks[-1] == "[DONE]"
    usage = chunks[-2]["usage"]  # type: ignore[index]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-2] if c["choices"])  # type: ignore[index]
    assert text == "Hi from the script"
    assert usage["completion_tokens"] == 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + 4
    assert [s.completion_tokens for s in provider.requests()] == [4]


def test_answers_without_streaming_and_lists_its_models() -> None:
    with ScriptedProvider(Script(default=Reply(tokens=5))) as provider:
        body = chat(provider, stream=False).json()
        models = httpx.get(f"{provider.base_url}/models", timeout=5).json()
    assert body["choices"][0]["message"]["content"] == "word1 word2 word3 word4 word5"
    assert body["usage"]["completion_tokens"] == 5
    assert [m["id"] for m in models["data"]] == ["m1"]


def test_a_tool_call_then_plain_text_once_the_result_is_in() -> None:
    with ScriptedProvider(Script(rules=[Rule(when="hello", then=bash("sleep 5"))])) as provider:
        call = chat(provider, stream=False).json()["choices"][0]
        done = chat(provider, stream=False, messages=[*USER, {"role": "tool", "content": "ok"}])
    assert call["finish_reason"] == "tool_calls"
    function = call["message"]["tool_calls"][0]["function"]
    assert function["name"] == "bash"
    assert json.loads(function["arguments"])["command"] == "sleep 5"
    assert done.json()["choices"][0]["message"]["content"] == "Done."


def test_errors_a_limited_number_of_times_then_answers() -> None:
    script = Script(rules=[Rule(then=HttpError(429, retry_after=2), times=1)])
    with ScriptedProvider(script) as provider:
        limited = chat(provider, stream=True)
        fine = chat(provider, stream=True)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.headers["retry-after-ms"] == "2000"
    assert fine.status_code == 200
    assert [s.step for s in provider.requests()] == ["HttpError", "Reply"]


def test_a_stalled_stream_sends_some_chunks_then_nothing() -> None:
    with ScriptedProvider(Script(default=Stall(chunks=2, seconds=None))) as provider:  # noqa: SIM117
        with httpx.stream(
            "POST",
            f"{provider.base_url}/chat/completions",
            json={"model": "m1", "messages": USER, "stream": True},
            timeout=httpx.Timeout(10, read=1.0),
        ) as response:
            lines: list[str] = []
            with pytest.raises(httpx.ReadTimeout):
                for line in response.iter_lines():
                    lines.append(line)
    texts = [json.loads(x[6:])["choices"][0]["delta"].get("content") for x in lines if x]
    assert texts == ["", "word1", " word2"]


def test_a_bad_request_body_gets_a_clear_400() -> None:
    with ScriptedProvider(Script()) as provider:
        not_json = httpx.post(f"{provider.base_url}/chat/completions", content=b"{", timeout=5)
        no_list = chat(provider, stream=True, messages=["hello"])
        wrong_path = httpx.get(f"{provider.base_url}/nothing", timeout=5)
    assert not_json.status_code == 400
    assert "not JSON" in not_json.json()["error"]["message"]
    assert no_list.status_code == 400
    assert "a list of {role, content} objects" in no_list.json()["error"]["message"]
    assert wrong_path.status_code == 404
    assert provider.requests() == []


def test_waits_before_the_first_token() -> None:
    with ScriptedProvider(Script(default=Reply(tokens=1, first_token_delay=0.5))) as provider:
        started = time.monotonic()
        chat(provider, stream=True)
        assert time.monotonic() - started >= 0.5


def test_bad_scripts_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\]\.then\.kind is 'nap'"):
        parse_script({"rules": [{"then": {"kind": "nap"}}]})
    with pytest.raises(ConfigError, match=r"rules\[0\]\.times must be a whole number"):
        parse_script({"rules": [{"then": {"kind": "reply"}, "times": 0}]})
    with pytest.raises(ConfigError, match=r"does not fit a reply step"):
        parse_script({"rules": [{"then": {"kind": "reply", "speed": 3}}]})
    path = tmp_path / "script.json"
    path.write_text('{"rules": [{"when": "x", "then": {"kind": "error", "status": 500}}]}')
    assert load_script(path).rules[0].then == HttpError(500)
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_script(path)


def test_refuses_the_users_own_home() -> None:
    with pytest.raises(ConfigError, match="your own HOME"):
        write_provider_config(Path.home(), "http://127.0.0.1:9/v1")


def stats_numbers(output: str) -> dict[str, float]:
    """``opencode stats``'s table rows (``│Output   4 │``) as numbers; ``2.4K`` is 2400."""
    found = {}
    for name, value, suffix in re.findall(r"│([A-Za-z /]+?)\s+\$?([\d.]+)([KM]?)\s*│", output):
        found[name] = float(value) * {"": 1, "K": 1e3, "M": 1e6}[suffix]
    return found


def test_opencode_run_answers_from_the_script_and_counts_its_tokens(
    tmp_path: Path, opencode_bin: Path, opencode_config: Path
) -> None:
    env = private_env(tmp_path)
    install_config(opencode_config, env)
    script = Script(rules=[Rule(when="hello", then=Reply(text="Hello from the script, friend"))])
    with ScriptedProvider(script) as provider:
        write_provider_config(Path(env["HOME"]), provider.base_url, Path(env["XDG_CONFIG_HOME"]))
        ran = subprocess.run(
            [str(opencode_bin), "run", "--model", "scripted/m1", "say hello"],
            env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert "Hello from the script, friend" in ran.stdout
        stats = subprocess.run(
            [str(opencode_bin), "stats"],
            env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    served = provider.requests()
    numbers = stats_numbers(stats.stdout)
    assert numbers["Output"] == sum(s.completion_tokens for s in served) == 5
    prompt = sum(s.prompt_tokens for s in served)
    assert abs(numbers["Input"] - prompt) <= 50, (numbers, prompt)  # shown as e.g. "2.4K"


@pytest.fixture(scope="module")
def served_opencode(
    opencode_bin: Path, opencode_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DirectServer, ScriptedProvider]]:
    """One real ``opencode serve`` on the scripted provider, for this module's tests."""
    env = private_env(tmp_path_factory.mktemp("scripted-serve"))
    install_config(opencode_config, env)
    script = Script(
        rules=[
            Rule(when="get busy", then=bash("sleep 3")),
            Rule(when="write it", then=write("notes.txt", "written by the script\n")),
            Rule(
                when="measure", then=Reply(tokens=20, tokens_per_second=40, first_token_delay=0.3)
            ),
            Rule(when="refuse", then=HttpError(500, retry_after=0.1, message="scripted refusal")),
        ]
    )
    with ScriptedProvider(script) as provider:
        write_provider_config(Path(env["HOME"]), provider.base_url, Path(env["XDG_CONFIG_HOME"]))
        server = DirectServer(opencode_bin, env, int(env["NEXUS_OPENCODE_PORT"]), "pw")
        server.start()
        try:
            server.wait_healthy(60)
            yield server, provider
        finally:
            server.stop()
            kill_everything_of(env)


def prompt(server: DirectServer, text: str) -> str:
    session = server.post("/session", {}).json()["id"]
    sent = server.post(
        f"/session/{session}/prompt_async", {"parts": [{"type": "text", "text": text}]}
    )
    assert sent.status_code == 204, sent.text
    return str(session)


def status_of(server: DirectServer, session: str) -> str:
    return str(server.get("/session/status").json().get(session, {}).get("type", "idle"))


def tool_states(server: DirectServer, session: str) -> list[str]:
    messages = server.get(f"/session/{session}/message").json()
    return [p["state"]["status"] for m in messages for p in m["parts"] if p["type"] == "tool"]


def test_a_bash_tool_call_keeps_the_session_busy_while_it_runs(
    served_opencode: tuple[DirectServer, ScriptedProvider],
) -> None:
    server, _ = served_opencode
    session = prompt(server, "please get busy")
    wait_for(
        lambda: (
            tool_states(server, session) == ["running"] and status_of(server, session) == "busy"
        ),
        what="the session to be busy while its bash tool runs",
    )
    wait_for(lambda: status_of(server, session) == "idle", what="the session to be idle again")
    assert tool_states(server, session) == ["completed"]
    messages = server.get(f"/session/{session}/message").json()
    assert [p["tool"] for m in messages for p in m["parts"] if p["type"] == "tool"] == ["bash"]
    assert messages[-1]["parts"][-2]["text"] == "Done."


def test_a_write_tool_call_writes_the_file(
    served_opencode: tuple[DirectServer, ScriptedProvider],
) -> None:
    server, _ = served_opencode
    session = prompt(server, "write it")
    wait_for(lambda: (Path(server.env["HOME"]) / "notes.txt").exists(), what="notes.txt")
    assert (Path(server.env["HOME"]) / "notes.txt").read_text() == "written by the script\n"
    wait_for(lambda: status_of(server, session) == "idle", what="the session to be idle again")


def test_the_driver_measures_concurrent_sessions_on_a_real_server(
    served_opencode: tuple[DirectServer, ScriptedProvider],
) -> None:
    server, provider = served_opencode
    before = len(provider.requests())
    result = run_workload(server.url, Credentials("opencode", "pw"), 2, ["measure 1", "measure 2"])
    assert not result.errors, result.errors
    assert sorted(p.index for p in result.prompts) == [0, 0, 1, 1]
    assert len({p.session for p in result.prompts}) == 2
    for prompt_result in result.prompts:
        assert prompt_result.first_token is not None
        assert 0.3 <= prompt_result.first_token <= prompt_result.latency  # the scripted delay
        assert prompt_result.output_tokens == 20
    assert [s.completion_tokens for s in provider.requests()[before:]] == [20] * 4
    p50, p99 = result.p50(), result.p99()
    assert p50 is not None and p99 is not None and 0 < p50 <= p99 <= result.seconds
    assert result.first_token_p50() is not None


def test_the_driver_records_the_error_of_a_failed_prompt(
    served_opencode: tuple[DirectServer, ScriptedProvider],
) -> None:
    server, _ = served_opencode
    result = run_workload(server.url, Credentials("opencode", "pw"), 1, ["refuse this"])
    [failed] = result.errors
    assert "scripted refusal" in str(failed.error)
    assert failed.first_token is None
    assert result.p50() is None  # no prompt succeeded


def test_the_driver_names_a_wrong_password(
    served_opencode: tuple[DirectServer, ScriptedProvider],
) -> None:
    server, _ = served_opencode
    with pytest.raises(OpenCodeUnavailable, match=r"/event failed: .*401"):
        run_workload(server.url, Credentials("opencode", "wrong"), 1, ["measure"])
    with pytest.raises(ConfigError, match="at least one session and one prompt"):
        run_workload(server.url, None, 0, ["measure"])


def test_first_tokens_are_the_assistants_text_only() -> None:
    tokens = FirstTokens()
    user_part = {"type": "text", "text": "hi", "messageID": "u1"}
    tokens.feed({"type": "message.part.updated", "properties": {"part": user_part}}, 1.0)
    info = {"id": "a1", "role": "assistant", "sessionID": "s1"}
    tokens.feed({"type": "message.updated", "properties": {"info": info}}, 1.1)
    empty = {"type": "text", "text": "", "messageID": "a1"}
    tokens.feed({"type": "message.part.updated", "properties": {"part": empty}}, 1.2)
    delta = {"messageID": "a1", "field": "text", "delta": "word1"}
    tokens.feed({"type": "message.part.delta", "properties": delta}, 1.5)
    tokens.feed({"type": "message.part.delta", "properties": delta}, 1.9)
    assert tokens.first_after("s1", 1.0) == pytest.approx(0.5)
    assert tokens.first_after("s2", 1.0) is None
    assert tokens.first_after("s1", 2.0) is None  # an earlier prompt's text


def test_percentiles_are_of_the_prompts_that_succeeded() -> None:
    prompts = [PromptResult("s", i, float(i + 1), None) for i in range(100)]
    prompts.append(PromptResult("s", 100, 500.0, None, error="boom"))
    result = WorkloadResult(prompts, 10.0)
    assert (result.p50(), result.p99()) == (50.0, 99.0)
    assert len(result.errors) == 1
