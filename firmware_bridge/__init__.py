"""Serial link to the treadmill motor-controller firmware, and a simulated firmware."""
