"""tomolive's Tiled server: start it (:mod:`~tomolive.server.launch`), the process it runs
(:mod:`~tomolive.server.tiled_serve`), its API keys (:mod:`~tomolive.server.keys`) and the web
view it serves (:mod:`~tomolive.server.web`).
"""

from .keys import create_key
from .launch import SERVER_MODULE, config_path, running_server, server_command, wait_until_up

__all__ = ["SERVER_MODULE", "config_path", "create_key", "running_server", "server_command", "wait_until_up"]
