"""A local server that speaks Runpod's public serverless endpoint API and runs a handler in worker processes.

Point the runpod SDK at it with `runpod.endpoint_url_base = "http://127.0.0.1:PORT/v2"`.
"""

from .app import create_app
from .server import serve
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
