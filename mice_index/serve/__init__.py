"""The search service (`mice-index serve`): a FastAPI app over a Searcher, with micro-batching.

Needs the `serve` extra (fastapi, uvicorn): `pip install "mice-index[serve]"`.
"""

from mice_index.serve.app import create_app
from mice_index.serve.batching import BatchConfig, MicroBatcher, QueueFull

__all__ = ["BatchConfig", "MicroBatcher", "QueueFull", "create_app"]
