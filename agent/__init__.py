"""Clients of the generative backends: GPT (agent.gpt) and Stable Diffusion WebUI (agent.sd, agent.pool).

Nothing in this package knows about Flask: the app builds the clients once from its config.
"""
