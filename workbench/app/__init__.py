"""The Gradio app's own package: what ``app.py`` wires together.

``models`` (the two compared checkpoints and the app's limits), ``examples`` (bundled images),
``inputs`` (the page's payloads, checked), ``session`` (one user's state), ``handlers`` (compare,
re-threshold, inspect, prompt banks: plain functions over a session), ``search`` (one model over
many images), ``render`` (images, tables and plots), ``export`` (COCO json, FiftyOne) and
``layout`` (the page). Only ``layout`` imports gradio, so tests call every handler without a
server; nothing here knows where the repository keeps its models or examples (``app.py`` passes
them in).
"""
