"""An OpenAI-compatible model server on 127.0.0.1 that answers from a script.

It serves ``POST /v1/chat/completions`` (streamed as server-sent events, or as one
JSON body) and ``GET /v1/models``, with the stdlib's threaded HTTP server, and
records every request it answers so that tests can count what was served.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nexus_ops.workload.script import HttpError, Reply, Rule, Script, Stall, Step, ToolCall

MODELS = ("m1",)

Pause = Callable[[float | None], object]


@dataclass(frozen=True)
class Served:
    """One request the provider answered."""

    model: str
    step: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    title: bool


def count_tokens(text: str) -> int:
    """A rough token count (four characters a token), as the usage the provider reports.

    >>> count_tokens("12345678")
    2
    """
    return max(1, len(text) // 4) if text else 0


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def is_title_request(messages: list[dict[str, Any]]) -> bool:
    """OpenCode asks the model for a session title with a system prompt of its own."""
    system = " ".join(message_text(m) for m in messages if m.get("role") == "system")
    return "title generator" in system.lower()


class ScriptedProvider:
    """The scripted model server; use as a context manager, or ``start``/``stop``."""

    def __init__(self, script: Script, port: int = 0) -> None:
        self.script = script
        self.served: list[Served] = []
        self._uses = [0] * len(script.rules)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="scripted-provider", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # ends stalls that wait forever
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests(self, title: bool = False) -> list[Served]:
        """What was served; by default without OpenCode's title requests."""
        with self._lock:
            return [s for s in self.served if s.title == title]

    def tokens_served(self) -> int:
        with self._lock:
            return sum(s.completion_tokens for s in self.served)

    def choose(self, messages: list[dict[str, Any]]) -> Step:
        """The step that answers a conversation (and count the use of its rule)."""
        if is_title_request(messages):
            return Reply(text=self.script.title)
        if messages and messages[-1].get("role") == "tool":
            return self.script.after_tool
        last_user = next(
            (message_text(m) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        with self._lock:
            for index, rule in enumerate(self.script.rules):
                if rule.when in last_user and _has_uses(rule, self._uses[index]):
                    self._uses[index] += 1
                    return rule.then
        return self.script.default

    def record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def next_id(self) -> str:
        return f"chatcmpl-{next(self._ids)}"

    def pause(self, seconds: float | None) -> None:
        """Wait ``seconds`` (None: until the provider stops)."""
        self._stop.wait(seconds)


def _has_uses(rule: Rule, used: int) -> bool:
    return rule.times is None or used < rule.times


def _handler(provider: ScriptedProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(_ChatHandler):
        owner = provider

    return Handler


class _ChatHandler(BaseHTTPRequestHandler):
    owner: ScriptedProvider
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the provider records requests instead of logging them."""

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        data = [{"id": m, "object": "model", "owned_by": "scripted"} for m in MODELS]
        self._json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            self._json(400, {"error": {"message": f"the body is not JSON: {exc}"}})
            return
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            message = "the body needs `messages`: a list of {role, content} objects"
            self._json(400, {"error": {"message": message, "type": "invalid_request_error"}})
            return
        self._answer(body, messages)

    def _answer(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        step = self.owner.choose(messages)
        model = str(body.get("model", ""))
        stream = bool(body.get("stream"))
        prompt = sum(count_tokens(message_text(m)) for m in messages)
        served = 0
        if isinstance(step, HttpError):
            self._error(step)
        else:
            chunks = Completion(self.owner.next_id(), model, step, prompt)
            served = self._stream(chunks) if stream else self._whole(chunks)
        self.owner.record(
            Served(model, type(step).__name__, stream, prompt, served, is_title_request(messages))
        )

    def _error(self, step: HttpError) -> None:
        headers = {}
        if step.retry_after is not None:
            headers["Retry-After"] = f"{step.retry_after:g}"
            headers["Retry-After-Ms"] = f"{step.retry_after * 1000:.0f}"  # read by the AI SDK
        kind = "rate_limit_exceeded" if step.status == 429 else "server_error"
        self._json(step.status, {"error": {"message": step.message, "type": kind}}, headers)

    def _stream(self, completion: Completion) -> int:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for chunk in completion.chunks(self.owner.pause):
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: what it got is still counted
        return completion.served

    def _whole(self, completion: Completion) -> int:
        for _ in completion.chunks(self.owner.pause):
            pass
        self._json(200, completion.whole())
        return completion.served

    def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class Completion:
    """The chunks of one answer, paced as its step says, and what they came to."""

    def __init__(self, ident: str, model: str, step: Reply | ToolCall | Stall, prompt: int) -> None:
        self.ident, self.model, self.step, self.prompt = ident, model, step, prompt
        self.served = 0
        self.text = ""
        self.finish = "stop"
        self.tool: dict[str, Any] = {}

    def chunks(self, pause: Pause) -> Iterator[dict[str, Any]]:
        step = self.step
        if isinstance(step, Reply | ToolCall) and step.first_token_delay:
            pause(step.first_token_delay)
        yield self._chunk({"role": "assistant", "content": ""})
        if isinstance(step, ToolCall):
            yield self._chunk({"tool_calls": [self._tool_call(step)]})
            self.served += count_tokens(json.dumps(step.arguments))
            self.finish = "tool_calls"
        elif isinstance(step, Stall):
            for piece in Reply(tokens=step.chunks).chunks():
                yield self._text(piece)
            pause(step.seconds)
        else:
            yield from self._paced(step)
        yield self._chunk({}, finish=self.finish)
        yield self._usage()

    def _paced(self, reply: Reply) -> Iterator[dict[str, Any]]:
        gap = 1.0 / reply.tokens_per_second if reply.tokens_per_second > 0 else 0.0
        started = time.monotonic()
        for index, piece in enumerate(reply.chunks()):
            wait = started + index * gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            yield self._text(piece)

    def _text(self, piece: str) -> dict[str, Any]:
        self.served += 1
        self.text += piece
        return self._chunk({"content": piece})

    def _tool_call(self, step: ToolCall) -> dict[str, Any]:
        self.tool = {
            "id": f"call_{self.ident}",
            "type": "function",
            "function": {"name": step.tool, "arguments": json.dumps(step.arguments)},
        }
        return {"index": 0, **self.tool}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.ident,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _usage(self) -> dict[str, Any]:
        chunk = self._chunk({})
        chunk["choices"] = []
        chunk["usage"] = self.usage()
        return chunk

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.served,
            "total_tokens": self.prompt + self.served,
        }

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.finish == "tool_calls":
            message["tool_calls"] = [self.tool]
        return {
            "id": self.ident,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
            "usage": self.usage(),
        }
