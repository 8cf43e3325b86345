"""The field service: the controllers and the escort over MQTT (``citybrain control serve``).

``protocol`` is the wire contract (pure), ``core`` the service's logic (pure), ``service``
the broker connection and the clock.
"""
