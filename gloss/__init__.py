"""gloss: label the learned features of neural networks, score the labels, keep them in SQL.

One namespace: `gloss.store` (the database and its API), `gloss.pipeline` (every stage
and the `gloss` command), `gloss.review` (the web app), `gloss.prompts` and
`gloss.migrations`. In the repository they are the top-level folders `store/`,
`pipeline/`, `review/`, `prompts/` and `migrations/`, which `gloss/` links to; a built
wheel holds them under `gloss/`, so nothing else lands at the top level.
"""
