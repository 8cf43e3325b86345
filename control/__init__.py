"""Signal control: pure cores (models, controllers, safety); no SUMO, no MQTT, no SQL."""
