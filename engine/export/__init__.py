"""Layer 7, the files a run ships: TFLite variants composed from the cached backbone and the head (or converted),
the SavedModel, the int8 calibration images, the model card, and bundle.zip with engine/bundle/'s standalone
predict.py and serve.py."""
