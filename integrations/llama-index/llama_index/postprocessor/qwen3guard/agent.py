"""moderate_agent_stream: moderate a FunctionAgent / AgentWorkflow run's streamed answer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from llama_index.core.agent.workflow.workflow_events import AgentInput, AgentStream

from qwen3guard import GuardOutputError, GuardUnavailableError, Qwen3Guard, Qwen3GuardViolation

from ._common import chat_messages_to_dicts, log, resolve_guard
from ._stream import StreamGate, discard_session


async def moderate_agent_stream(
    handler: Any,
    guard: Qwen3Guard | None = None,
    *,
    hold_back_events: int = 3,
    cancel_timeout: float = 5.0,
) -> AsyncIterator[Any]:
    """Stream a workflow run's events, moderating the LLM's streamed text token by token.

    ``handler`` is what ``FunctionAgent.run(...)`` / ``AgentWorkflow.run(...)`` returns. Each
    LLM call's ``AgentStream`` deltas are fed to a Stream session opened on the messages of the
    ``AgentInput`` event that started it (so tool results are part of the context). Events are
    passed through unchanged, ``AgentStream`` events ``hold_back_events`` late; when the session
    flags the answer, the held events after the flagged span's start are dropped (the one that
    straddles it is cut), ``await handler.cancel_run()`` stops the run, and
    :class:`~qwen3guard.Qwen3GuardViolation` (stage ``output``) is raised. After a violation do
    not use the handler's result.

    The workflow runs ahead of its event consumer, so cancellation stops whatever the run is
    doing when the flag arrives; to keep unsafe tool input or output away from the LLM, guard
    the tools themselves with :func:`guard_tool`.

        handler = agent.run("...")
        async for ev in moderate_agent_stream(handler, guard=guard):
            if isinstance(ev, AgentStream):
                print(ev.delta, end="")
        response = await handler
    """
    guard = resolve_guard(guard)
    prompt: list[dict[str, str]] | None = None
    turn: _Turn | None = None
    blocked: _Turn | None = None
    stream = handler.stream_events()
    try:
        async for ev in stream:
            if isinstance(ev, AgentStream):
                if turn is None:
                    turn = _Turn(guard, hold_back_events)
                    for e in await turn.open(prompt):
                        yield e
                for e in await turn.feed(ev):
                    yield e
                if turn.gate.blocked:
                    blocked = turn
                    break
                continue
            if turn is not None:  # any other event ends the LLM call being streamed
                for e in await turn.finish():
                    yield e
                if turn.gate.blocked:
                    blocked = turn
                    break
                turn = None
            if isinstance(ev, AgentInput):
                prompt = _prompt_of(ev.input)
            yield ev
        else:
            if turn is not None:
                for e in await turn.finish():
                    yield e
                if turn.gate.blocked:
                    blocked = turn
    finally:
        if turn is not None:
            await turn.close()
        await _aclose(stream)
    if blocked is not None:
        await handler.cancel_run(timeout=cancel_timeout)
        log.info("qwen3guard cancelled an agent run: %s", blocked.gate.info())
        raise blocked.gate.error(blocked.gate.answer)


class _Turn:
    """One LLM call's streamed answer."""

    def __init__(self, guard: Qwen3Guard, hold_back: int) -> None:
        self.guard = guard
        self.session: Any = None
        self.gate: StreamGate[AgentStream] = StreamGate(
            guard, hold_back=hold_back, text_of=lambda ev: ev.delta or "", truncate=self._cut
        )

    def _cut(self, ev: AgentStream, n: int) -> AgentStream | None:
        if n <= 0:
            return None
        shown = self.gate.answer[: self.gate.flag_offset]
        return ev.model_copy(update={"delta": (ev.delta or "")[:n], "response": shown})

    async def open(self, prompt: list[dict[str, str]] | None) -> list[AgentStream]:
        if not self.gate.checking:
            return []
        try:
            self.session = await self.guard.aopen_stream(prompt or _NO_PROMPT)
        except (GuardUnavailableError, GuardOutputError) as exc:
            return self.gate.failed(exc)
        return []

    async def feed(self, ev: AgentStream) -> list[AgentStream]:
        if self.gate.blocked:
            return []
        if self.session is None or not self.gate.moderating() or not ev.delta:
            return self.gate.passed_item(ev)
        try:
            update = await self.session.afeed_text(ev.delta)
        except (GuardUnavailableError, GuardOutputError) as exc:
            return self.gate.failed_item(ev, exc)
        return self.gate.fed_item(ev, update)

    async def finish(self) -> list[AgentStream]:
        if self.gate.blocked:
            return []
        final = None
        if self.session is not None and self.gate.moderating():
            try:
                final = await self.session.aclose()
            except (GuardUnavailableError, GuardOutputError) as exc:
                return self.gate.failed(exc)
        return self.gate.ended(final)

    async def close(self) -> None:
        if self.session is not None:
            await discard_session(self.session)


_NO_PROMPT = [{"role": "user", "content": "(no user message)"}]


def _prompt_of(messages: Any) -> list[dict[str, str]] | None:
    """The agent's LLM input as the Stream session's prompt: up to the last user / tool turn."""
    msgs = chat_messages_to_dicts(messages)
    while msgs and msgs[-1]["role"] not in ("user", "tool"):
        msgs.pop()
    return msgs or None


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if callable(aclose):
        with contextlib.suppress(Exception):  # closing is best effort
            await aclose()


__all__ = ["Qwen3GuardViolation", "moderate_agent_stream"]
