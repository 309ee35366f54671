"""Layer 4, what a backbone sees: the offline backbones (resolved, ported from PyTorch weights to Keras once
per machine, converted to TFLite), the per-image feature cache, per-image statistics and perceptual hashes, and
the Ray embedding for collections one machine cannot embed."""
