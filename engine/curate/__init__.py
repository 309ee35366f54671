"""Layer 8, curation: what may be wrong with a labelled image set, and a trained head's help with the unsorted rest.

This package owns the curate signals and their project glue, one module each:

* label_issues: labelled rows another class explains better (cleanlab on out-of-fold probabilities and k-NN votes);
* outliers: images unlike their own class, and odd images (blank, dark, bright, blurry, extreme aspect);
* findings: all signals together for a folder (the `inspect` command) or a project (the Curate page);
* decisions: what a person kept, in <project>/curate.json, so it is not shown again;
* map: a project's images in 2-D (t-SNE or PCA), cached in <project>/curate/;
* model: the run a project's curation uses and the images embedded as that run saw them;
* suggestions: the inbox's suggested classes with cautious confidences, and accepting them.

Near-duplicate groups and perceptual hashes sit lower (engine.learn.groups, engine.features.image_stats) because
training keeps copies in one fold with them. The libraries take arrays and return row indices; the modules that
read or write a project, a run folder or a cache are findings, decisions, map, model and suggestions. Nothing
here moves or deletes a file on its own: a person clicks.
"""
