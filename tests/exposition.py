"""Reading a Prometheus text exposition (what GET /metrics answers) in tests."""

from __future__ import annotations


def sample(text: str, name: str, default: float | None = None) -> float:
    """The value of the unlabelled sample `name`; `default` when it is absent, else (no default)
    an AssertionError naming the sample."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    if default is None:
        raise AssertionError(f"{name} not in /metrics")
    return default


def scrape(url: str, name: str, default: float | None = None) -> float:
    """`sample` of the server at `url`'s GET /metrics."""
    import httpx

    return sample(httpx.get(url + "/metrics", timeout=10).text, name, default)
