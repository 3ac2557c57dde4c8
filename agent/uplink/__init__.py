"""Getting things off the device: the MQTT link (``link``), the durable outbox it sends
from (``outbox``), config fetched from the collector (``configsync``) and the heartbeat
payload (``heartbeat``)."""
