"""Prometheus text exposition of request counters, latencies and transfer volumes.

Counters live in the process that serves the request; with several workers each scrape sees
one worker's counters (the database gauges are global).
"""

from __future__ import annotations

import threading
from collections import defaultdict


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.duration_sum: dict[str, float] = defaultdict(float)
        self.duration_count: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.redirects = 0  # file requests answered with a link to the object store

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.duration_sum[route] += seconds
            self.duration_count[route] += 1

    def add_bytes(self, direction: str, n: int) -> None:
        with self._lock:
            self.bytes[direction] += n

    def add_redirect(self) -> None:
        with self._lock:
            self.redirects += 1

    def render(self, gauges: dict[str, float]) -> str:
        lines = [
            "# HELP lorahive_http_requests_total HTTP requests by method, route and status.",
            "# TYPE lorahive_http_requests_total counter",
        ]
        with self._lock:
            for (m, r, s), n in sorted(self.requests.items()):
                lines.append(
                    f'lorahive_http_requests_total{{method="{m}",route="{_esc(r)}",status="{s}"}} {n}')
            lines += [
                "# HELP lorahive_http_request_duration_seconds Time spent serving requests.",
                "# TYPE lorahive_http_request_duration_seconds summary",
            ]
            for r in sorted(self.duration_sum):
                lines.append(f'lorahive_http_request_duration_seconds_sum{{route="{_esc(r)}"}} '
                             f"{self.duration_sum[r]:.6f}")
                lines.append(f'lorahive_http_request_duration_seconds_count{{route="{_esc(r)}"}} '
                             f"{self.duration_count[r]}")
            lines += ["# HELP lorahive_transfer_bytes_total Blob bytes received and sent.",
                      "# TYPE lorahive_transfer_bytes_total counter"]
            for d in ("upload", "download"):
                lines.append(f'lorahive_transfer_bytes_total{{direction="{d}"}} {self.bytes[d]}')
            lines += ["# HELP lorahive_download_redirects_total File requests answered with a "
                      "redirect to object storage.",
                      "# TYPE lorahive_download_redirects_total counter",
                      f"lorahive_download_redirects_total {self.redirects}"]
        for name, value in sorted(gauges.items()):
            lines += [f"# TYPE lorahive_{name} gauge", f"lorahive_{name} {value:g}"]
        return "\n".join(lines) + "\n"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')
