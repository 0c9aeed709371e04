"""Once the models load, bge-serve freezes the heap: full collections stop walking it."""

from __future__ import annotations

import gc

from api.cli import freeze_loaded_heap


def test_what_start_up_allocated_is_out_of_the_collectors_reach() -> None:
    kept = [[] for _ in range(1000)]  # lists: tracked by the collector
    try:
        freeze_loaded_heap()
        frozen = gc.get_freeze_count()
        assert frozen >= len(kept)
        # Tracked objects left for a collection to walk: those made since, not the frozen.
        assert len(gc.get_objects()) < frozen
    finally:
        gc.unfreeze()
