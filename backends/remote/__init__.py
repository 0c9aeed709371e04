"""Remote backend: an existing TEI, Infinity or bge-serve deployment, reached over HTTP."""

from backends.remote.backend import RemoteBackend

__all__ = ["RemoteBackend"]
