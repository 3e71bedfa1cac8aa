"""One exception hierarchy for all of gloss.

It lives in `store` because `store` may not import `pipeline`; the pipeline and
the web app raise these too. Every message says what was wrong and what to do.
The CLI prints `str(error)` and exits with `error.exit_code`, never a traceback.
"""


class GlossError(Exception):
    exit_code = 1


class ConfigError(GlossError):
    """A setting, a flag or a config file is wrong."""

    exit_code = 2


class DatabaseError(GlossError):
    """The database cannot be used: unreachable, corrupt, malformed URL."""

    exit_code = 3


class SchemaBehindError(DatabaseError):
    """The database is at an older revision than the code."""


class SchemaAheadError(DatabaseError):
    """The database was written by a newer gloss."""


class NotFoundError(GlossError):
    """A feature, source or explanation that was asked for does not exist."""

    exit_code = 4


class ConflictError(GlossError):
    """Somebody else changed the thing first (reviews, locks)."""

    exit_code = 5


class LockedError(ConflictError):
    """Another run holds the database's run lock."""

    exit_code = 75


class InputError(GlossError):
    """Bad input data: empty corpus, wrong dimensions, unknown hook point."""

    exit_code = 2


class ModelError(GlossError):
    """A subject model or feature source could not be loaded or used."""

    exit_code = 6


class LLMError(GlossError):
    """An LLM call failed after its retries, or answered something unusable."""

    exit_code = 7
