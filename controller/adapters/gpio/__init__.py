"""The GPIO adapter: the console inputs and the Pi's own belt sensor, over an injected gpiozero pin
factory.
"""
