"""Synthetic workload for a real OpenCode server.

``script`` says what a scripted model answers, ``provider`` serves it as an
OpenAI-compatible HTTP API on 127.0.0.1, ``config`` points an isolated OpenCode
config at it, and ``driver`` sends prompts through OpenCode's own API and measures
what comes back (docs/workload.md).
"""
