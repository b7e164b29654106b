"""The wire protocol to the motor-controller firmware: CRC, framing, messages, link bookkeeping
(pure: no I/O, no clock).
"""
