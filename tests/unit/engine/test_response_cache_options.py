"""A cache hit refuses the request options a miss refuses: `Engine.infer` takes a priority
only as an integer from 0 to 2^64 - 1 and a timeout only from 0 on, whether or not the answer
is in the response cache (a caller must not learn of a bad value only once the cache is cold)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from surge.errors import InputError
from tests.unit.engine.test_response_cache import answer, cached, x


@pytest.mark.parametrize(("options", "message"), [
    ({"priority": -1}, "priority must be an integer"),
    ({"priority": "urgent"}, "priority must be an integer"),
    ({"priority": 2**64}, "priority must be an integer"),
    ({"timeout_us": -5}, "timeout must be >= 0"),
])
def test_a_hit_refuses_what_a_miss_refuses(tmp_path: Path, options: dict[str, Any],
                                           message: str) -> None:
    async def body() -> None:
        async with cached(tmp_path) as served:
            await answer(served, 1.0)  # now in the cache
            with pytest.raises(InputError, match=message):
                await served.engine.infer("m", None, x(1.0), **options)
            with pytest.raises(InputError, match=message):  # and so does a miss
                await served.engine.infer("m", None, x(9.0), **options)
            assert len(served.pool.dispatched) == 1

    asyncio.run(body())
