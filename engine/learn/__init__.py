"""Layer 5, training on features: a run's prepared data, copy-aware fold groups, cross-validation with L2 choice,
calibration and the "unknown" threshold, the NumPy head, evaluation, the backbone comparison, and opt-in
fine-tuning (Keras classifier, augmentation, tf.distribute, TensorBoard summaries)."""
