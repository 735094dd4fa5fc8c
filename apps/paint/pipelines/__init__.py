"""The generation pipelines of the sketching app, one module per /generate type.

`steps` holds the two kinds of step (ask GPT for items, draw an image), `flow` runs a
request's independent steps at the same time, `prompts` loads the templates under
settings/, `parsing` reads LLM answers, `inputs` checks the client's prompts and
`creatives` builds the cards in the contract's shape.
"""
