"""Applications bundled with herdrt; :mod:`herdrt.apps.proxy` is the location proxy herd."""
