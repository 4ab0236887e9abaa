"""Serving building blocks shared by the web app and the HTTP API (``serve/``).

Light to import: no gradio, no FastAPI here. ``config`` (ServeConfig, ServeLimits from YAML),
``limits`` (admission gate: bounded concurrency and waiting, busy and timeout errors),
``dataurl`` (base64 ``data:`` URLs only, remote URLs refused), ``thinking`` (splits ``<think>``
reasoning from the answer, also while streaming), ``backends`` (local reasoner or an external
OpenAI-compatible server) and ``service`` (the models and every operation the app offers).
"""
