"""Tasks with the official Python MCP SDK over streamable HTTP (2026-07-28): a client
extension that declares `io.modelcontextprotocol/tasks` and resolves the server's task handle
(`resultType: "task"`) by polling `tasks/get`, as the SDK's extension interface intends; the
result must equal what a client without tasks gets synchronously.

Usage: python tests/python/tasks_http.py path/to/imagegen-mcp
"""

import asyncio
import os
import signal
import sys
import tempfile
from typing import Any, Literal

from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import CallToolResult, Request, RequestParams, Result
from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

from smoke_http import TOKEN, start

OPEN = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)


class TaskHandle(Result):
    """What `tools/call` answers with when the server made a task (SEP-2663)."""

    model_config = OPEN
    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    poll_interval_ms: int | None = None


class GetTaskParams(RequestParams):
    task_id: str


class GetTask(Request[GetTaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: GetTaskParams
    name_param = "taskId"


class TaskState(Result):
    """A `tasks/get` answer: the task, with its result inline once completed."""

    model_config = OPEN
    task_id: str
    status: str
    status_message: str | None = None
    result: dict[str, Any] | None = None


class Tasks(ClientExtension):
    identifier = "io.modelcontextprotocol/tasks"

    def __init__(self) -> None:
        self.created: list[str] = []
        self.messages: list[str] = []

    def claims(self):
        return (ResultClaim(result_type="task", model=TaskHandle, resolve=self.resolve),)

    async def resolve(self, handle: TaskHandle, ctx: ClaimContext) -> CallToolResult:
        self.created.append(handle.task_id)
        interval = (handle.poll_interval_ms or 1000) / 1000
        for _ in range(600):
            state = await ctx.session.send_request(
                GetTask(params=GetTaskParams(task_id=handle.task_id)), TaskState
            )
            if state.status_message:
                self.messages.append(state.status_message)
            if state.status == "completed":
                return CallToolResult.model_validate(state.result)
            assert state.status == "working", state
            await asyncio.sleep(min(interval, 0.1))
        raise AssertionError("the task never finished")


ARGUMENTS = {"prompt": "a lighthouse at dusk", "size": "256x256", "seed": 11}


async def call(url: str, extensions: list[ClientExtension]) -> CallToolResult:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with create_mcp_http_client(headers=headers) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode="auto", extensions=extensions) as client:
            return await client.call_tool("generate_image", ARGUMENTS)


async def main() -> None:
    binary = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory() as home:
        proc, url, lines = start(binary, home)
        try:
            tasks = Tasks()
            via_task = await call(url, [tasks])
            assert len(tasks.created) == 1, "the server answered with a task"
            assert any("requesting" in m for m in tasks.messages), tasks.messages
            plain = await call(url, [])
            assert not via_task.is_error and not plain.is_error, (via_task, plain)
            a, b = via_task.structured_content, plain.structured_content
            for field in ("provider", "model", "prompt"):
                assert a[field] == b[field], (field, a[field], b[field])
            assert a["images"][0]["sha256"] == b["images"][0]["sha256"], "same image both ways"
            assert [c.type for c in via_task.content] == [c.type for c in plain.content]
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        assert code == 0, f"exit {code}:\n" + "".join(lines)
    print(f"python mcp tasks over http: ok, {len(tasks.messages)} status messages polled")


if __name__ == "__main__":
    asyncio.run(main())
