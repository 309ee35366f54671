"""Layer 1, plain data: the training configuration (TrainConfig, its defaults, choices and bounds), the backbone
table, the TFLite variant table and the run folder's file names. Standard library only: the app reads these on
every page and the CLI validates flags with them before anything heavy loads."""
