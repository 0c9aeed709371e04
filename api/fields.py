"""Field types of the dialects' request bodies, so the OpenAPI schema states what
validation enforces: a text is non-empty (``minLength``), a list of texts has one
at least (``minItems``). Texts of whitespace or invisible characters only pass the
schema and are refused by the engine, with the same 422."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["Text", "Texts"]

Text = Annotated[str, msgspec.Meta(min_length=1, description="Non-empty, with a visible character")]
Texts = Annotated[list[Text], msgspec.Meta(min_length=1)]
