"""`uellm run --backend ray`: the same plan, with each replica a Ray actor on its node.

Ray is an optional extra (`pip install 'uellm-cli[ray]'`); only this package imports it, and
only `driver.py` at that. The driver reads, validates, profiles and plans as on one machine,
with the cluster read from Ray (`cluster.py`); replicas pull batches (`queue.py`, `dispatch.py`)
and results come back to the driver's durable writer. See docs/ray.md.
"""

from __future__ import annotations

import socket

from uellm_cli.errors import ConfigError, MissingExtraError

CONNECT_TIMEOUT_S = 10.0
# An actor is a fresh process: Ray starts it, then it imports torch and transformers before it
# loads any weights (seen here: about 4 s on a small CPU). The forecast adds it to the load.
EXPECTED_ACTOR_START_S = 4.0
INSTALL_HINT = "pip install 'uellm-cli[ray]' (on every node of the cluster)"


def require_ray() -> None:
    """Fail fast, without importing Ray (slow), when it is not installed."""
    MissingExtraError.unless_installed(
        "ray", f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}")


def check_reachable(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Ray keeps retrying an address nobody listens on (for minutes); a HOST:PORT that refuses
    a TCP connection is refused here at once, in one line."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot connect to Ray at {address}: {exc}",
                          hint="check the address (`ray status` on the head node prints it), or "
                               "drop --ray-address to start a local Ray") from exc
