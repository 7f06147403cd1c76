"""Smoke test with the official Python MCP SDK: drive `imagegen-mcp serve` over stdio on the
mock provider, in both the 2026-07-28 (discover) and the legacy (initialize) modes.

Usage: python tests/python/smoke.py path/to/imagegen-mcp
"""

import asyncio
import base64
import hashlib
import os
import sys
import tempfile

from mcp import Client, StdioServerParameters


async def run(binary: str, mode: str) -> None:
    with tempfile.TemporaryDirectory() as home:
        env = {
            "HOME": home,
            "XDG_CONFIG_HOME": os.path.join(home, ".config"),
            "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
            "PATH": os.environ.get("PATH", ""),
        }
        # A provider that is always down and a route that falls over from it to the mock.
        with open(os.path.join(home, "imagegen.toml"), "w") as f:
            f.write(
                'default_provider = "mock"\n'
                '[providers.down]\nkind = "mock"\nfail_rate = 1.0\nfail_with = "upstream_unavailable"\n'
                '[routes.any]\nproviders = ["down", "mock"]\n'
            )
        params = StdioServerParameters(command=binary, args=["serve"], env=env, cwd=home)
        async with Client(params, mode=mode) as client:
            tools = await client.list_tools()
            names = sorted(t.name for t in tools.tools)
            assert names == [
                "create_variation",
                "delete_image",
                "edit_image",
                "find_images",
                "gallery_page",
                "generate_image",
                "generate_images",
                "list_providers",
            ], names
            gen = next(t for t in tools.tools if t.name == "generate_image")
            assert gen.output_schema and gen.output_schema["type"] == "object", gen.output_schema

            providers = await client.call_tool("list_providers", {})
            assert not providers.is_error, providers
            assert providers.structured_content["default_provider"] == "mock", providers.structured_content

            result = await client.call_tool(
                "generate_image", {"prompt": "a lighthouse at dusk", "size": "1024x1024"}
            )
            assert not result.is_error, result
            kinds = [c.type for c in result.content]
            assert "image" in kinds and "resource_link" in kinds, kinds
            preview = next(c for c in result.content if c.type == "image")
            assert len(preview.data) <= 80_000, len(preview.data)
            image = result.structured_content["images"][0]
            assert result.structured_content["error"] is None
            assert (image["width"], image["height"]) == (1024, 1024), image
            with open(image["path"], "rb") as f:
                saved = f.read()
            assert saved.startswith(b"\x89PNG"), "a real PNG"
            assert hashlib.sha256(saved).hexdigest() == image["sha256"]

            link = next(c for c in result.content if c.type == "resource_link")
            read = await client.read_resource(link.uri)
            blob = base64.b64decode(read.contents[0].blob)
            assert blob == saved, "resources/read returns the saved image"

            edited = await client.call_tool(
                "edit_image", {"prompt": "the same lighthouse at night", "images": [link.uri]}
            )
            assert not edited.is_error, edited
            assert edited.structured_content["images"][0]["width"] == 1024

            batch = await client.call_tool(
                "generate_images", {"prompts": ["a red kite", "a blue boat"], "size": "256x256"}
            )
            assert not batch.is_error, batch
            results = batch.structured_content["results"]
            assert [r["prompt"] for r in results] == ["a red kite", "a blue boat"], results
            assert batch.structured_content["summary"]["succeeded"] == 2

            gif = await client.call_tool(
                "generate_image",
                {"prompt": "a spinning top", "model": "fast", "output_format": "gif",
                 "frame_count": 3, "size": "256x256"},
            )
            assert not gif.is_error, gif
            animated = gif.structured_content["images"][0]
            assert gif.structured_content["model"] == "mock-image-1", gif.structured_content
            assert animated["mime"] == "image/gif" and animated["frames"] == 3, animated
            read = await client.read_resource(animated["uri"])
            assert read.contents[0].mime_type == "image/gif"
            assert base64.b64decode(read.contents[0].blob).startswith(b"GIF8")

            svg = await client.call_tool(
                "generate_image", {"prompt": "a logo", "output_format": "svg", "size": "256x256"}
            )
            assert not svg.is_error, svg
            assert svg.structured_content["images"][0]["mime"] == "image/svg+xml", svg.structured_content

            routed = await client.call_tool(
                "generate_image", {"prompt": "a harbour", "provider": "any", "size": "256x256"}
            )
            assert not routed.is_error, routed
            route = routed.structured_content["route"]
            assert [(s["provider"], s["outcome"]) for s in route] == [
                ("down", "failed"), ("mock", "served")], route
            assert routed.structured_content["provider"] == "mock"

            refused = await client.call_tool("generate_image", {"prompt": "x", "size": "7x7"})
            assert refused.is_error
            assert refused.structured_content["error"]["kind"] == "invalid_request"
            assert refused.structured_content["error"]["param"] == "size"
    print(f"python mcp smoke ({mode}): ok, {len(saved)} byte PNG, preview {len(preview.data)} b64 bytes")


async def main() -> None:
    binary = os.path.abspath(sys.argv[1])
    for mode in ("auto", "legacy"):
        await run(binary, mode)


if __name__ == "__main__":
    asyncio.run(main())
