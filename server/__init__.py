"""classroom-server: the collector. Ingests device events from MQTT, stores them
(SQLite or PostgreSQL), serves the staff dashboard and API, rolls out config."""

from agent import __version__  # one version for the whole distribution

__all__ = ["__version__"]
