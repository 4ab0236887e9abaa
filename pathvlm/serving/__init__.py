"""Serving building blocks shared by the web app and the HTTP API (``serve/``).

Light to import: no gradio, no FastAPI here. ``config`` (ServeConfig, ServeLimits from YAML),
``limits`` (admission gates: bounded concurrency and waiting, busy and timeout errors, cancellation,
the pixel budget), ``dataurl`` (base64 ``data:`` URLs only, remote URLs refused; images checked from
their header and decoded later), ``validate`` (text and sampling values), ``auth`` (credentials and
the failed-login throttle), ``memory`` (giving decoded images' memory back), ``thinking`` (splits
``<think>`` reasoning from the answer, also while streaming), ``backends`` (local reasoner or an
external OpenAI-compatible server) and ``service`` (the models and every operation the app offers).
The security model and every limit: ``docs/serving-security.md``.
"""
