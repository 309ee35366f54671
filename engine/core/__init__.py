"""Layer 0, shared by every other package: progress events, atomic file writes, the hidden-file rule, and the
one place each for TensorFlow/Keras version quirks and the LiteRT interpreter. Imports nothing of the engine."""
