"""The MQTT adapter: publisher task, settings, state/event payloads, remote command parsing and
Home Assistant discovery.
"""
