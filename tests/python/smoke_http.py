"""Smoke test with the official Python MCP SDK over streamable HTTP: run `imagegen-mcp serve
--http` on every address (0.0.0.0, as a service would; the client connects over loopback)
with a bearer token, and drive it in both the 2026-07-28 (discover)
and the legacy (initialize) modes: list tools, generate with progress, read the resource.

Usage: python tests/python/smoke_http.py path/to/imagegen-mcp
"""

import asyncio
import base64
import os
import signal
import subprocess
import sys
import tempfile
import threading

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

TOKEN = "imagegen-SENTINEL-python-token-31f9"


def start(binary: str, home: str) -> tuple[subprocess.Popen, str, list[str]]:
    """Starts the server and returns it, its base URL and the list its stderr lines go to."""
    token_file = os.path.join(home, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    with open(os.path.join(home, "imagegen.toml"), "w") as f:
        f.write(
            'default_provider = "mock"\n'
            "[providers.mock]\nlatency_ms = 300\n"
            f'[[server.auth.tokens]]\nname = "python"\ntoken_file = "{token_file}"\n'
        )
    env = {
        "HOME": home,
        "XDG_CONFIG_HOME": os.path.join(home, ".config"),
        "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
        "PATH": os.environ.get("PATH", ""),
        "IMAGEGEN_HEARTBEAT_MS": "50",
        "IMAGEGEN_CATALOG__CHECK_UPSTREAM": "false",
    }
    proc = subprocess.Popen(
        [binary, "serve", "--http", "0.0.0.0:0"],
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def drain() -> None:
        for line in proc.stderr:
            lines.append(line)
            if not found.is_set() and "url=http://" in line:
                url.append(line.split("url=", 1)[1].split()[0])
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    if not found.wait(30) or not url:
        proc.kill()
        raise SystemExit("the server did not report its URL:\n" + "".join(lines))
    return proc, url[0], lines


async def run(url: str, mode: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with create_mcp_http_client(headers=headers) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            tools = await client.list_tools()
            names = sorted(t.name for t in tools.tools)
            assert "generate_image" in names and "list_providers" in names, names

            progress: list[float] = []

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                progress.append(value)

            result = await client.call_tool(
                "generate_image",
                {"prompt": "a lighthouse at dusk", "size": "256x256"},
                progress_callback=on_progress,
            )
            assert not result.is_error, result
            assert progress, "no progress notifications over HTTP"
            link = next(c for c in result.content if c.type == "resource_link")
            read = await client.read_resource(link.uri)
            blob = base64.b64decode(read.contents[0].blob)
            with open(result.structured_content["images"][0]["path"], "rb") as f:
                assert blob == f.read(), "resources/read returns the saved image"
    print(f"python mcp http smoke ({mode}): ok, {len(progress)} progress notifications")


async def refused_without_token(url: str) -> None:
    async with create_mcp_http_client() as http:
        answer = await http.post(
            url,
            content=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
            headers={"content-type": "application/json",
                     "accept": "application/json, text/event-stream"},
        )
        assert answer.status_code == 401, answer.status_code
        assert answer.headers["www-authenticate"].startswith("Bearer"), answer.headers


async def main() -> None:
    binary = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory() as home:
        proc, url, lines = start(binary, home)
        try:
            await refused_without_token(url)
            for mode in ("auto", "legacy"):
                await run(url, mode)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        out = proc.stdout.read()
        assert code == 0, f"exit {code}:\n" + "".join(lines)
        assert "SENTINEL" not in "".join(lines) + out, "the token leaked into the output"


if __name__ == "__main__":
    asyncio.run(main())
