"""Front doors over the library: FiftyOne (``fiftyone*``); the Gradio app is ``workbench.app``.

Only modules in this package and the app's page (``workbench/app/layout.py``) may import gradio
or fiftyone (tests/test_architecture.py). The FiftyOne modules import it inside their functions.
"""
