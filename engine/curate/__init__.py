"""Layer 8, curation: what may be wrong with a labelled image set, and a trained head's help with the unsorted rest.

This package owns the curate signals and their project glue, one module each:

* label_issues: labelled rows another class explains better (cleanlab on out-of-fold probabilities and k-NN votes);
* outliers: images unlike their own class, and odd images (blank, dark, bright, blurry, extreme aspect);
* findings: all signals together for a folder (the `inspect` command) or a project (the Curate page), and a
  project's last check, kept in <project>/curate/;
* decisions: what a person kept (or said is rightly labelled), in <project>/curate.json, so it is not shown again;
* map: a project's images in 2-D (t-SNE or PCA), cached in <project>/curate/, and each class's colour;
* model: the run a project's curation uses and the images embedded as that run saw them;
* suggestions: the inbox's suggested classes with cautious confidences, how right a confidence threshold was in
  cross-validation, and accepting them.

Near-duplicate groups and perceptual hashes sit lower (engine.learn.groups, engine.features.image_stats) because
training keeps copies in one fold with them. The libraries take arrays and return row indices; the modules that
read or write a project, a run folder or a cache are findings, decisions, map, model and suggestions. Nothing
here moves or deletes a file on its own: a person clicks.
"""
