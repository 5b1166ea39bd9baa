"""Running wrk and reading its report: requests, rate, latency percentiles, errors, and the
counter line a benchmark's Lua script prints from done()."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


class BenchmarkFailed(RuntimeError):
    pass


@dataclass
class WrkResult:
    label: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    output: str
    seconds: float = 0.0
    # From the script's counter line (requests.lua, load_mix.lua): status -> count, etc.
    counters: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise BenchmarkFailed(f"cannot parse wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_counters(output: str, prefix: str) -> dict[str, dict[str, int]]:
    """`<PREFIX> name=k:v,k:v name2=... count=7` -> {"name": {"k": v}, "count": {"": 7}}."""
    match = re.search(rf"^{prefix} (.*)$", output, re.MULTILINE)
    if match is None:
        raise BenchmarkFailed(f"no {prefix} line in the wrk output:\n{output}")
    counters: dict[str, dict[str, int]] = {}
    for part in match.group(1).split():
        name, _, value = part.partition("=")
        if ":" in value or not value:
            counters[name] = {k: int(v) for k, v in (p.rsplit(":", 1) for p in value.split(",")
                                                     if p)}
        else:
            counters[name] = {"": int(value)}
    return counters


def parse_wrk(label: str, output: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise BenchmarkFailed(f"wrk output has no {pattern!r}:\n{output}")
        return match

    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        label=label,
        requests=int(find(r"^\s*(\d+) requests in").group(1)),
        seconds=duration_ms(find(r"^\s*\d+ requests in ([\d.]+\w+),").group(1)) / 1000,
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=duration_ms(find(r"^\s+50%\s+(\S+)").group(1)),
        p99_ms=duration_ms(find(r"^\s+99%\s+(\S+)").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        output=output,
    )


def run_wrk(label: str, url: str, script: Path, *script_args: str, duration: float,
            threads: int, connections: int, timeout: float = 5.0,
            counters: str | None = None) -> WrkResult:
    """One wrk run; `counters` names the prefix of the script's counter line to parse."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
               "--timeout", f"{timeout:g}s", "-s", str(script), url]
    if script_args:
        command += ["--", *script_args]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=duration + 60)
    if done.returncode != 0:
        raise BenchmarkFailed(f"wrk exited {done.returncode}: {done.stderr}{done.stdout}")
    result = parse_wrk(label, done.stdout)
    if counters:
        result.counters = parse_counters(done.stdout, counters)
    return result
