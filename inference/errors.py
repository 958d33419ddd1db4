"""Typed exceptions raised at every boundary of the engine (file, request, IPC)."""


class GGUFServeError(Exception):
    """Base class of every error gguf-serve raises on purpose."""


class GGUFError(GGUFServeError, ValueError):
    """A GGUF file is malformed, unsupported, or inconsistent with its architecture."""


class ModelConfigError(GGUFError):
    """GGUF metadata describes a model that cannot be valid (e.g. q heads not divisible by kv heads)."""


class TokenizerError(GGUFServeError, ValueError):
    """The vocabulary cannot be turned into a tokenizer, or ids/text cannot be encoded/decoded."""


class TemplateError(GGUFServeError, ValueError):
    """A chat template failed to parse or render, or raised via raise_exception()."""


class RequestError(GGUFServeError, ValueError):
    """A request is invalid. `param` names the offending request parameter (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ContextLengthError(RequestError):
    """Prompt + completion exceed the model's context window."""


class DraftModelError(GGUFServeError, ValueError):
    """A draft model that cannot draft for the target (its vocabulary differs)."""


class FetchError(GGUFServeError):
    """A model could not be fetched from the package registry or failed its checksum."""


class BackendError(GGUFServeError):
    """A compute backend failed (e.g. a CUDA launch error); names the kernel or op."""


class OutOfMemoryError(BackendError):
    """The model does not fit on the device; names both the needed and the available bytes."""
