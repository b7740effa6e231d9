"""Input devices: the i8042 keyboard controller."""
