"""The review web app (`gloss serve`): browse, search and correct feature labels. See app.py."""

from gloss.review.app import create_app, load_tokens

__all__ = ["create_app", "load_tokens"]
