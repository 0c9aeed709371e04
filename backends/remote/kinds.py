"""Which remote kind is which: REMOTE_KIND to how a remote is probed and reached.

``KINDS`` pairs each REMOTE_KIND with the probe that returns the bound remote
and the client class its requests go through; ``auto`` finds out at start-up
which kind the far end is (``identify``), then probes it as that kind.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import msgspec

from backends.remote.answers import expect_ok
from backends.remote.contract import Remote
from backends.remote.infinity import InfinityRemote
from backends.remote.peer import PeerRemote
from backends.remote.runpod import RunpodClient, RunpodRemote
from backends.remote.tei import TeiRemote
from backends.remote.transport import Deadline, RemoteClient
from backends.remote.vllm import VllmRemote
from engine.errors import StartupError
from engine.settings import RemoteKind, Settings

__all__ = ["KINDS", "Entry", "identify"]

log = logging.getLogger(__name__)

Probe = Callable[[RemoteClient, Settings, Deadline], Awaitable[Remote]]


class Entry(NamedTuple):
    probe: Probe  # what the remote serves: the remote, bound to its client and offer
    client: type[RemoteClient]  # how its requests reach it


async def identify(client: RemoteClient, deadline: Deadline) -> type[Remote]:
    """This service answers ``GET /health`` with its chains; TEI ``GET /info`` with its
    model_id; Infinity ``GET /models`` with a model list; vLLM ``GET /v1/models`` with a
    model list and ``GET /version`` with its version."""
    # /health first: a bge-serve answers /info (and /models) in TEI's (and Infinity's) dialect.
    health = await client.get("/health", deadline)
    if _has_keys(health.content, "chains", "backends"):
        return PeerRemote
    if _has_keys(health.content, "jobs", "workers"):
        # RunPod's own GET /health: its workers take jobs, not this service's requests.
        raise StartupError(
            f"the remote {client.url} is a RunPod Serverless endpoint; set REMOTE_KIND=runpod "
            "(and run bge-runpod-worker in it)"
        )
    info = await client.get("/info", deadline)
    if info.status == 200 and _has_keys(info.content, "model_id", "model_type"):
        return TeiRemote
    models = await client.get("/models", deadline)
    if models.status == 200 and _has_keys(models.content, "data"):
        return InfinityRemote
    # vLLM lists its models under /v1 only (404 at /models), and says its version.
    listed = await client.get("/v1/models", deadline)
    version = await client.get("/version", deadline)
    if (
        listed.status == 200
        and _has_keys(listed.content, "data")
        and version.status == 200
        and _has_keys(version.content, "version")
    ):
        return VllmRemote
    answers = (info, health, models, listed, version)
    for answer in answers:
        if answer.status in (401, 403, 429) or answer.status >= 500:
            expect_ok(answer)  # not up, or not letting us in: not a wrong kind
    raise StartupError(
        f"the remote {client.url} is neither TEI (GET /info), Infinity (GET /models), vLLM "
        f"(GET /v1/models, /version) nor bge-serve (GET /health) (they answered HTTP "
        f"{', '.join(str(answer.status) for answer in answers)}); check REMOTE_URL or set "
        "REMOTE_KIND"
    )


async def _identified(client: RemoteClient, settings: Settings, deadline: Deadline) -> Remote:
    kind = await identify(client, deadline)
    log.info("remote %s: REMOTE_KIND=auto found %s", client.url, kind.name)
    return await kind.probe(client, settings, deadline)


def _has_keys(content: bytes, *keys: str) -> bool:
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return False
    return isinstance(body, dict) and all(key in body for key in keys)


KINDS: dict[RemoteKind, Entry] = {
    "auto": Entry(_identified, RemoteClient),
    "tei": Entry(TeiRemote.probe, RemoteClient),
    "infinity": Entry(InfinityRemote.probe, RemoteClient),
    "self": Entry(PeerRemote.probe, RemoteClient),
    # A RunPod endpoint is reached through jobs, whatever it then speaks.
    "runpod": Entry(RunpodRemote.probe, RunpodClient),
    "vllm": Entry(VllmRemote.probe, RemoteClient),
}
