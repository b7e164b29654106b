"""One adapter per device: GPIO inputs, MQTT, systemd. Adapters never import each other."""
