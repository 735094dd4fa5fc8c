"""Test doubles of the generative backends: real HTTP servers that speak the protocols.

`simulators.webui` answers like an AUTOMATIC1111 WebUI started with `--api`, and
`simulators.chat` like Azure OpenAI / OpenAI chat completions; both run on the threaded
server of `simulators.http`. They draw cheap deterministic answers instead of running a
model; they exist for the tests, the benchmarks and the offline demo (`python app.py
--demo`, `simulators.demo`), never for a real study.
"""
