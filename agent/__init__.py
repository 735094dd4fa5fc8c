"""Clients of the generative backends: GPT (agent.gpt) and Stable Diffusion WebUI (agent.sd, agent.pool).

Every error they raise is in agent.errors. Nothing in this package knows about Flask: the
app builds the clients once from its config.
"""
