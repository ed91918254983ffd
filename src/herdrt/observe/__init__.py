"""Seeing the herd work: Prometheus metrics, health, the live herd page and ``herdrt top``.

Every node with an ``http_port`` serves ``/metrics``, ``/healthz`` and the herd page
(:class:`~herdrt.observe.http.HttpServer`); the metrics are read from the node's own counters at
scrape time (:mod:`herdrt.observe.metrics`), and the page and ``herdrt top`` draw the same herd
view (:mod:`herdrt.observe.view`).
"""

from .http import HttpServer, health
from .metrics import NodeCollector, node_registry
from .view import HerdWatch

__all__ = ["HttpServer", "health", "NodeCollector", "node_registry", "HerdWatch"]
