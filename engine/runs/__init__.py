"""Layer 9, a training run from start to finish: the pipeline that fills a run folder, its status (the one writer
of status.json), background jobs and the forking worker that starts them, the run history the pages read, and the
comparison of two runs."""
