"""Layer 2, images and folders: decoding any image a user drops in, scanning an image_dir into a Dataset (and its
snapshot), the readiness rule, and the synthetic demo images. Knows nothing of projects, models or runs."""
