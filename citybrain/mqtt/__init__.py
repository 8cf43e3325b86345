"""The MQTT layer that parking and the field service share, one module per job:

- ``address``: broker URLs, credentials, TLS trust (``BrokerSettings``), client ids;
- ``backoff``: reconnecting with back-off (the schedule, and one connection attempt);
- ``wire``: the project's own MQTT 3.1.1 codec (packets, no I/O);
- ``link``: one connection over that codec, driven by its owner's loop: the parking hot
  path (the settlement service and the gateways);
- ``paho``: configured paho-mqtt clients (the field service, one-shot publishes, tests);
- ``brokers``: a broker of one's own (Mosquitto, else ``embedded``: amqtt from PyPI) for
  tests, the demo and local trials, and a reachability probe.

Nothing here knows about parking or signals: topics and payloads live with their
protocols (``citybrain.parking.mqtt``, ``citybrain.field.protocol``).
"""
