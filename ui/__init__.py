"""Gradio widgets wired to `dynamictrl.studio` functions. Never imports torch."""
