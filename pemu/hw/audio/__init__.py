"""Audio devices (only the PC speaker port, silent)."""
