"""Front doors over the library: the Gradio app (``app_*``) and FiftyOne (``fiftyone*``).

Only modules in this package may import gradio or fiftyone (tests/test_architecture.py). The
FiftyOne modules import it inside their functions; ``app_layout`` (the page) is the one app module
that imports gradio, and ``app.py`` loads it inside ``build_demo``. The other ``app_*`` modules are
plain Python, so tests call every app handler without a server.
"""
