"""The full classifier as a Keras model: the backbone's feature layer and the head's dense layer, images in [0,1]
at the backbone's size -> calibrated probabilities. Fine-tuning trains it; the SavedModel template is traced from it.

This module imports TensorFlow: the head-only path (and the app's worker) never imports it, only fine-tuning, the
SavedModel template and TrainResult.model do.
"""

from __future__ import annotations

from engine.config.backbones import ResolvedBackbone
from engine.core.tfcompat import hub, keras
from engine.features.port import frozen_backbone, hub_module
from engine.learn.head import Head


def _frozen_bn_hub_layer(path: str, name: str):
    """A trainable hub layer whose BatchNorm statistics stay fixed: small fine-tuning batches would ruin them."""
    class _FrozenBatchNormHubLayer(hub.KerasLayer):
        def call(self, inputs, training=None):
            return super().call(inputs, training=False)

    return _FrozenBatchNormHubLayer(path, trainable=True, name=name)


def build_classifier(resolved: ResolvedBackbone, head: Head, trainable: bool = False, dropout_rate: float = 0.0,
                     l1: float = 0.0):
    """Images in [0,1] at the backbone's size -> calibrated probabilities (the head's temperature is baked into
    the dense layer's weights, as in every exported model)."""
    size = resolved.image_size
    if trainable:
        feature = _frozen_bn_hub_layer(hub_module(resolved), "feature_extractor")
    else:
        feature = frozen_backbone(resolved)
    dense = keras.layers.Dense(head.n_classes, activation="softmax", name="probabilities",
                               kernel_regularizer=keras.regularizers.L1(l1) if l1 else None)
    model = keras.Sequential([keras.Input((size, size, 3), name="images"), feature,
                              keras.layers.Dropout(dropout_rate, name="dropout"), dense], name="classifier")
    dense.set_weights(list(head.calibrated()))
    return model
