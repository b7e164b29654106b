"""Treadmill controller: safety core, service, MQTT telemetry."""
