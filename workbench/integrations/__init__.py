"""Front doors over the library: the Gradio app's logic (``app_*``) and FiftyOne
(``fiftyone*``).

Only modules in this package may import gradio or fiftyone (tests/test_architecture.py), and
they do so inside functions; the ``app_*`` modules are plain Python, so tests call every app
handler without a server.
"""
