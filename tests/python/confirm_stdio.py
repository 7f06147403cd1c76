"""The cost confirmation (`budget.confirm_above_usd`) with the official Python MCP SDK over
stdio, in the 2026-07-28 mode (an input-required round trip) and the legacy mode (an
`elicitation/create` request): the user's yes lets the call through, a no sends nothing.

Usage: python tests/python/confirm_stdio.py path/to/imagegen-mcp
"""

import asyncio
import os
import sys
import tempfile

from mcp import Client, StdioServerParameters
from mcp_types import ElicitResult


async def run(binary: str, mode: str, answer: str) -> None:
    with tempfile.TemporaryDirectory() as home:
        env = {
            "HOME": home,
            "XDG_CONFIG_HOME": os.path.join(home, ".config"),
            "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
            "PATH": os.environ.get("PATH", ""),
            "IMAGEGEN_CATALOG__CHECK_UPSTREAM": "false",
        }
        # The mock, priced at $0.50 an image, above a $0.10 threshold.
        with open(os.path.join(home, "imagegen.toml"), "w") as f:
            f.write(
                'default_provider = "mock"\n'
                '[models."mock-image-1".prices]\nper_image = 0.5\n'
                "[budget]\nconfirm_above_usd = 0.10\n"
            )
        asked: list[str] = []

        async def elicit(context, params):
            asked.append(params.message)
            if answer == "accept":
                return ElicitResult(action="accept", content={"confirm": True})
            return ElicitResult(action=answer)

        params = StdioServerParameters(command=binary, args=["serve"], env=env, cwd=home)
        async with Client(params, mode=mode, elicitation_callback=elicit) as client:
            result = await client.call_tool("generate_image", {"prompt": "a lighthouse", "size": "256x256"})
            assert len(asked) == 1 and "$0.50" in asked[0], asked
            if answer == "accept":
                assert not result.is_error, result
                assert result.structured_content["images"], result.structured_content
            else:
                assert result.is_error, result
                assert result.structured_content["error"]["kind"] == "declined", result.structured_content
                found = await client.call_tool("find_images", {})
                assert not found.structured_content["images"], "a declined call made nothing"
    print(f"python mcp confirmation ({mode}, {answer}): ok")


async def main() -> None:
    binary = os.path.abspath(sys.argv[1])
    for mode in ("auto", "legacy"):
        for answer in ("accept", "decline"):
            await run(binary, mode, answer)


if __name__ == "__main__":
    asyncio.run(main())
