"""Layer 6, using an exported model: classify images with a .tflite file, a SavedModel, a run folder or a bundle,
and serve a bundle over HTTP with the bundle's own server (engine/bundle/)."""
