"""Patroni's REST API, as ops tools and the deploy side read it: who leads a cluster, its members,
its failover history, and a planned switchover.

Scripted against the REST API (`/primary`, `/cluster`, `/history`, `/switchover`), never against
`patronictl list` output. Plain urllib: these calls run in ops commands and deploy scripts, never
on a request's path.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

# Roles a member reports in /cluster while it leads (Patroni 3 said "master", 4 says "leader";
# a standby cluster's leader is "standby_leader").
LEADER_ROLES = ("leader", "primary", "master", "standby_leader")


class PatroniError(RuntimeError):
    """Patroni could not be reached or refused; the message says which member and why."""


@dataclass(frozen=True)
class Answer:
    status: int  # 0: nothing answered (refused, timed out)
    body: Any
    error: str = ""


def call(url: str, path: str, *, method: str = "GET", payload: dict[str, Any] | None = None,
         timeout: float = 2.0) -> Answer:
    """One REST call; never raises for a refused connection or an HTTP error status."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(f"{url.rstrip('/')}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, _decode(response.read()))
    except urllib.error.HTTPError as exc:
        # /primary answers 503 with the member's status as its body: still an answer.
        return Answer(exc.code, _decode(exc.read()))
    except (OSError, ValueError) as exc:
        return Answer(0, None, str(exc))


def _decode(raw: bytes) -> Any:
    text = raw.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def find_leader(urls: list[str], *, timeout: float = 0.5) -> str | None:
    """The REST URL of the member that leads now, or None while none does.

    Every member is asked `/primary` at once. After a kill two may answer 200 for a moment: the
    old leader's Patroni reports its last state until its next loop (1.3-1.7 s measured), while
    the new one already leads on a later timeline. The later timeline wins."""
    if not urls:
        return None
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        answers = list(pool.map(lambda url: call(url, "/primary", timeout=timeout), urls))
    leading = [(_timeline(answer.body), url) for url, answer in zip(urls, answers, strict=True)
               if answer.status == 200]
    return max(leading)[1] if leading else None


def _timeline(body: Any) -> int:
    timeline = body.get("timeline") if isinstance(body, dict) else None
    return int(timeline) if isinstance(timeline, int) else 0


def cluster_members(urls: list[str], *, timeout: float = 2.0) -> list[dict[str, Any]]:
    """`/cluster` from the first member that answers: name, role, state, timeline, lag of
    each member. Raises PatroniError when none answers."""
    failures = []
    for url in urls:
        answer = call(url, "/cluster", timeout=timeout)
        if answer.status == 200 and isinstance(answer.body, dict):
            return list(answer.body.get("members", []))
        failures.append(f"{url}: {answer.error or answer.status}")
    raise PatroniError("no Patroni member answered /cluster (" + "; ".join(failures) + "); "
                       "check that Patroni runs (`python -m deploy.topology status`)")


def history(urls: list[str], *, timeout: float = 2.0) -> list[list[Any]]:
    """Patroni's failover history: [timeline, lsn, reason, timestamp, new leader] per change."""
    for url in urls:
        answer = call(url, "/history", timeout=timeout)
        if answer.status == 200 and isinstance(answer.body, list):
            return answer.body
    return []


def switchover(url: str, *, leader: str, candidate: str | None,
               timeout: float = 30.0) -> Answer:
    """Ask Patroni (through the member at `url`) to hand the leader role over now."""
    payload: dict[str, Any] = {"leader": leader}
    if candidate:
        payload["candidate"] = candidate
    return call(url, "/switchover", method="POST", payload=payload, timeout=timeout)
