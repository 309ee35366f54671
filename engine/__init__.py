"""Retrain Studio engine: offline backbones, dataset scanning, embedding cache, training, export, prediction.

No Streamlit here: everything takes plain data and dataclasses so the CLI, the app and the tests share it.
"""

__version__ = "0.1.0"
