"""The exceptions seamless raises on purpose. Each message says what to change."""


class SeamlessError(Exception):
    """Base of every error seamless raises for a reason a user can act on."""


class ConfigError(SeamlessError):
    """A recipe, an override or a CLI argument is invalid; the message names the dotted key."""


class ServiceError(SeamlessError):
    """A service seamless started (Redis, vLLM, ...) failed to start, crashed or would not stop."""


class UpstreamUnavailable(SeamlessError):
    """No healthy rollout server can take a request."""


class UnknownSession(SeamlessError):
    """A session id that the store does not know (never created, or already cleaned up)."""


class SessionFinished(SeamlessError):
    """A call or change for a session that has finished (its episode was handed to the trainer)."""
