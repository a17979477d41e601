"""The search service (`mice-index serve`): a FastAPI app over a Searcher, with micro-batching.

Needs the `serve` extra (fastapi, uvicorn): `pip install "mice-index[serve]"`. Re-exports are
resolved on first use, so the CLI can read `ServeLimits` without importing FastAPI.
"""

from importlib import import_module

__all__ = ["BatchConfig", "MicroBatcher", "QueueFull", "ServeLimits", "create_app"]

_HOMES = {"create_app": "app", "BatchConfig": "batching", "MicroBatcher": "batching", "QueueFull": "batching",
          "ServeLimits": "limits"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"mice_index.serve.{_HOMES[name]}"), name)
