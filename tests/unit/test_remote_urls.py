"""A remote's URL: its credentials (user, password, a gateway's ?token=) reach the remote
on every request and no message."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from backends.remote.transport import Deadline, RemoteClient, public_url
from engine.errors import Unavailable

URL = "https://alice:hunter2@tei.example:8443/base/?token=s3cret&region=eu#part"


def test_public_url_drops_credentials_query_and_fragment() -> None:
    assert public_url(URL) == "https://tei.example:8443/base"
    assert public_url("http://[::1]:8080/?token=s3cret") == "http://[::1]:8080"


@pytest.mark.parametrize("api_key", [None, "bearer-key"])
def test_the_query_goes_on_every_request_and_in_no_error(api_key: str | None) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, json={"error": "warming up", "error_type": "Unhealthy"})

    async def run() -> str:
        client = RemoteClient(
            URL,
            api_key=api_key,
            max_concurrency=2,
            retries=0,
            transport=lambda: httpx.MockTransport(answer),
        )
        try:
            await client.get("/info", Deadline(5))
            with pytest.raises(Unavailable) as refused:
                await client.post("/embed", {"inputs": "a"}, Deadline(5))
            return str(refused.value)
        finally:
            await client.close()

    message = asyncio.run(run())
    assert [(r.url.path, dict(r.url.params)) for r in seen] == [
        ("/base/info", {"token": "s3cret", "region": "eu"}),
        ("/base/embed", {"token": "s3cret", "region": "eu"}),
    ]
    assert "https://tei.example:8443/base" in message
    for secret in ("alice", "hunter2", "s3cret"):
        assert secret not in message
