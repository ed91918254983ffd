"""The herd: nodes linked over TCP (authenticated handshake, sealed records, optional mutual TLS),
membership and failure detection, routing, broadcast, keyed-actor placement, flow control, and
the client that talks to a node from outside.
"""

from .admin import ADMIN_ACTOR
from .client import HerdClient
from .node import HerdNode
from .placement import placement_key, ring_shares

__all__ = ["HerdNode", "HerdClient", "ADMIN_ACTOR", "placement_key", "ring_shares"]
