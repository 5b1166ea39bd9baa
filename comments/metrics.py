"""The comments app's own Prometheus metrics (the project's ``/metrics`` serves every metric
defined in the process, or in multiprocess mode every worker's, wherever it is defined).

    shardsvc_cache_total{cache,result}    ``record_cache(cache, hit)``
"""

from __future__ import annotations

from prometheus_client import Counter

CACHE = Counter("shardsvc_cache", "Cache lookups by cache and result.", ["cache", "result"])


def record_cache(cache: str, hit: bool) -> None:
    """Count one cache lookup. Keep `cache` to a few fixed names (e.g. "thread_page")."""
    CACHE.labels(cache, "hit" if hit else "miss").inc()
