"""Streamlit-side helpers for the app's pages (the engine package never imports this)."""
