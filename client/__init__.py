"""Clients of the InfiniteTalk endpoint: the typed HTTP client, the CLI and the Gradio UI.

Nothing here imports runpod or torch (gradio only when the UI is built); see client/README.md.
"""
