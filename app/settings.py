"""Settings: one msgspec Struct; precedence CLI flag > GGUF_SERVE_* env > TOML file > default."""

import argparse
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import msgspec

ENV_PREFIX = "GGUF_SERVE_"
CONFIG_ENV = "GGUF_SERVE_CONFIG"  # path of the TOML file; not a setting itself

# Where config/default.toml lives: a wheel carries it inside the package (pyproject.toml maps config/ to
# app/config/); a checkout or an editable install has it at the repository's top level, beside app/.
DEFAULT_CONFIG_PATHS = (
    Path(__file__).resolve().parent / "config" / "default.toml",
    Path(__file__).resolve().parents[1] / "config" / "default.toml",
)

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class SettingsError(ValueError):
    """An invalid setting; the message names the setting and where its value came from."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Service configuration. config/default.toml documents every field (a test keeps them equal)."""

    model: Annotated[str, msgspec.Meta(min_length=1)] = "smollm2-135m"
    served_model_name: str = ""  # "" = the registry key, or the .gguf file's stem
    host: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    api_key: str = ""  # "" = no authentication
    api_key_file: str = ""  # a file holding the key (kept out of argv and the environment)
    public_docs: bool = False  # OpenAPI schema and docs without the key (they always are without one)
    backend: Literal["auto", "cuda", "cpu", "numpy"] = "auto"
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0 = the cores this process may use
    kv_cache_dtype: Literal["f16", "f32"] = "f16"  # the cpu backend's KV cache; numpy and cuda keep f32
    max_num_seqs: PositiveInt = 16
    max_waiting: Annotated[int, msgspec.Meta(ge=0)] = 64
    max_num_batched_tokens: PositiveInt = 512
    kv_cache_tokens: PositiveInt = 32768
    block_size: PositiveInt = 16
    prefix_caching: bool = True
    draft_model: str = ""  # speculative decoding: a registry name or .gguf path; "" = none
    ngram_draft: bool = False  # speculative decoding by prompt lookup (not with draft_model)
    num_draft_tokens: PositiveInt = 4
    draft_token_budget: Annotated[int, msgspec.Meta(ge=0)] = 8
    draft_p_min: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.75
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    request_timeout_s: PositiveFloat = 600.0
    stream_idle_timeout_s: PositiveFloat = 30.0
    stream_buffer_events: PositiveInt = 256
    worker_stall_timeout_s: Annotated[float, msgspec.Meta(ge=2.0)] = 30.0  # the worker beats every 1 s
    shutdown_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    cache_dir: str = ""  # "" = the user's cache directory (e.g. ~/.cache/gguf-serve)

    def __post_init__(self) -> None:
        if self.kv_cache_tokens < self.block_size:
            raise ValueError(
                f"kv_cache_tokens ({self.kv_cache_tokens}) must be at least block_size ({self.block_size})"
            )


FIELDS: tuple[str, ...] = Settings.__struct_fields__
_CHOICES = ("backend", "kv_cache_dtype", "log_level")  # Literal-typed settings: an error lists the choices

# A layer: (values, where they came from, strict types?). TOML is typed; env and CLI are text.
Layer = tuple[dict[str, Any], str, bool]


def default_config_path(candidates: tuple[Path, ...] = DEFAULT_CONFIG_PATHS) -> Path:
    """config/default.toml, which documents every setting: the first candidate that exists.
    Raises FileNotFoundError naming every path it looked at."""
    for path in candidates:
        if path.is_file():
            return path
    looked = " and ".join(map(str, candidates))
    raise FileNotFoundError(f"default settings file not found: looked for {looked}; reinstall gguf-serve")


def load_settings(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike | None = None,
) -> Settings:
    """Settings from defaults, the TOML file, GGUF_SERVE_* variables and CLI flags (highest wins).

    `cli` maps setting names to values (None = flag not given); `config_file` defaults to
    $GGUF_SERVE_CONFIG. Raises SettingsError naming the setting and its source.
    """
    env = os.environ if env is None else env
    config_file = config_file or env.get(CONFIG_ENV) or None
    layers: list[Layer] = []
    if config_file:
        layers.append(_toml_layer(Path(config_file)))
    layers.append(_env_layer(env))
    layers.append(({k: v for k, v in (cli or {}).items() if v is not None}, "command line", False))
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for values, source, strict in layers:
        typed = _check_layer(values, source, strict)
        merged.update(typed)
        origin.update({key: _describe(source, key) for key in typed})
    try:
        settings = Settings(**merged)
    except ValueError as exc:
        named = [f"{k} from {origin.get(k, 'the default')}" for k in ("kv_cache_tokens", "block_size")]
        raise SettingsError(f"invalid settings: {exc} ({'; '.join(named)})") from None
    _check_one_proposer(settings, origin)
    return _with_api_key(settings, origin)


def _check_one_proposer(settings: Settings, origin: dict[str, str]) -> None:
    """Speculative decoding has one proposer: a draft model or n-gram lookup."""
    if settings.draft_model and settings.ngram_draft:
        raise SettingsError(
            f"set draft_model ({origin.get('draft_model')}) or ngram_draft ({origin.get('ngram_draft')}), "
            "not both: speculative decoding uses one proposer"
        )


# Keys that ship as examples (.env.example): a server started with one is open to anyone who read them.
EXAMPLE_API_KEYS = frozenset({"change-me"})
_GENERATE_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _with_api_key(settings: Settings, origin: dict[str, str]) -> Settings:
    """Reads api_key_file into api_key; refuses both at once, an empty file and the example key."""
    if settings.api_key_file:
        where = origin.get("api_key_file", "the default")
        if settings.api_key:
            raise SettingsError(f"set api_key ({origin.get('api_key')}) or api_key_file ({where}), not both")
        try:
            key = Path(settings.api_key_file).expanduser().read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(
                f"api_key_file {settings.api_key_file} from {where} cannot be read: {exc}"
            ) from None
        if not key:
            raise SettingsError(f"api_key_file {settings.api_key_file} from {where} is empty")
        settings = msgspec.structs.replace(settings, api_key=key)
        origin = {**origin, "api_key": f"the file {settings.api_key_file}"}
    if settings.api_key in EXAMPLE_API_KEYS:
        raise SettingsError(
            f"api_key from {origin.get('api_key')} is the example value from .env.example; "
            f"generate a key: {_GENERATE_KEY}"
        )
    return settings


def is_loopback(host: str) -> bool:
    """True when `host` is reachable from this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _toml_layer(path: Path) -> Layer:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc}") from None
    return data, f"config file {path}", True


def _env_layer(env: Mapping[str, str]) -> Layer:
    values = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in FIELDS:
            raise SettingsError(
                f"unknown setting in environment variable {name}; settings are "
                f"{', '.join(ENV_PREFIX + f.upper() for f in FIELDS)} (and {CONFIG_ENV} for a TOML file)"
            )
        values[key] = value
    return values, "environment", False


def _describe(source: str, key: str) -> str:
    if source == "environment":
        return f"environment variable {ENV_PREFIX}{key.upper()}"
    if source == "command line":
        return f"command line flag --{key.replace('_', '-')}"
    return f"{source} (key {key!r})"


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$")
_UNKNOWN = re.compile(r"unknown field `(?P<field>[^`]+)`")


def _check_layer(values: dict[str, Any], source: str, strict: bool) -> dict[str, Any]:
    """Validates one layer on its own (over the defaults) so an error names that layer's source."""
    try:
        checked = msgspec.convert(values, Settings, strict=strict)
    except msgspec.ValidationError as exc:
        text = str(exc)
        unknown = _UNKNOWN.search(text)
        if unknown:
            raise SettingsError(
                f"unknown setting {unknown['field']!r} in {source}; known settings: {', '.join(FIELDS)}"
            ) from None
        match = _AT.match(text)
        key = (match["path"] or "").split(".")[0].split("[")[0]
        if not key:  # e.g. the TOML has a table where a value belongs
            raise SettingsError(f"invalid settings in {source}: {text}") from None
        shown = "<hidden>" if key == "api_key" else repr(values.get(key))
        choices = get_args(Settings.__annotations__.get(key)) if key in _CHOICES else ()
        hint = f" (one of: {', '.join(choices)})" if choices else ""
        raise SettingsError(
            f"invalid setting {key} = {shown} from {_describe(source, key)}: {match['msg']}{hint}"
        ) from None
    except ValueError as exc:  # __post_init__'s cross-field check, all values from this layer
        raise SettingsError(f"invalid settings from {source}: {exc}") from None
    return {key: getattr(checked, key) for key in values}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per setting (`--max-num-seqs` for max_num_seqs) plus `--config FILE`."""
    documented = str(default_config_path()).replace("%", "%%")  # argparse %-formats help texts
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML settings file (also ${CONFIG_ENV}; default none); {documented} documents every setting",
    )
    defaults = Settings()
    for name in FIELDS:
        default = getattr(defaults, name)
        switch = isinstance(default, bool)  # `--ngram-draft` alone means true; `--ngram-draft false` works
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            nargs="?" if switch else None,
            const="true" if switch else None,
            metavar="SECONDS" if name.endswith("_s") else name.split("_")[-1].upper(),
            help=f"{_HELP[name]} (default {default!r}; env {ENV_PREFIX}{name.upper()})",
        )


_HELP = {  # one line each for --help; config/default.toml explains every setting at length
    "model": "registry name (e.g. smollm2-135m) or path to a .gguf file",
    "served_model_name": "name clients pass as `model`; '' = registry name or file stem",
    "host": "interface to listen on",
    "port": "TCP port",
    "api_key": "require 'Authorization: Bearer KEY'; '' = no authentication (prefer --api-key-file)",
    "api_key_file": "read the API key from this file (other local users cannot see it in ps)",
    "public_docs": "serve /schema (OpenAPI, docs) without the API key (true | false)",
    "backend": "auto | cuda | cpu | numpy",
    "threads": "threads of the cpu backend's kernels; 0 = every core this process may use",
    "kv_cache_dtype": "f16 | f32: the cpu backend's KV-cache element type",
    "max_num_seqs": "sequences decoded together",
    "max_waiting": "sequences queued beyond max_num_seqs before 429",
    "max_num_batched_tokens": "tokens per forward pass",
    "kv_cache_tokens": "KV-cache capacity in tokens",
    "block_size": "tokens per KV-cache block",
    "prefix_caching": "reuse the KV of earlier prompts' full blocks (true | false)",
    "draft_model": "speculative decoding: a smaller model with the same vocabulary proposes tokens",
    "ngram_draft": "speculative decoding: prompt lookup (n-gram continuation) proposes tokens",
    "num_draft_tokens": "tokens proposed per sequence per step (at most)",
    "draft_token_budget": "tokens proposed per step over all sequences: K falls as the batch grows",
    "draft_p_min": "the draft model proposes a token only if it gives it at least this probability",
    "max_body_bytes": "largest request body (413 beyond)",
    "request_timeout_s": "abort a request running longer than this",
    "stream_idle_timeout_s": "abort a request whose client has read nothing of its response for this long",
    "stream_buffer_events": "events buffered per choice for a client that does not read; beyond: abort",
    "worker_stall_timeout_s": "no heartbeat from the worker for this long: /health 503, worker replaced",
    "shutdown_grace_s": "drain time after SIGTERM",
    "log_level": "critical | error | warning | info | debug",
    "cache_dir": "where registry models are cached; '' = the user cache directory",
}


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Settings for a namespace parsed by a parser that add_arguments() filled."""
    cli = {name: getattr(args, name, None) for name in FIELDS}
    return load_settings(cli, env, getattr(args, "config", None))
