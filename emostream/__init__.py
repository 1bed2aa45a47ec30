"""EmoStream: live emoji reactions counted in 2-second windows and fanned out to viewers."""

__version__ = "1.0.0"
