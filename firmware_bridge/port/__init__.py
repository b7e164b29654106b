"""The serial-port adapter: the only code that opens the port to the firmware."""
