"""``modelpress flower``: Flower on the configured broker, behind basic auth unless told otherwise.

Flower 2.2 (field notes): with ``--basic-auth`` every page and ``/api/*`` answer 401 without the
credentials, but ``/metrics`` (Prometheus) and ``/healthcheck`` stay open — hence the default bind to
127.0.0.1, and a refusal to start without credentials unless the bind is local *and* the operator said
``--insecure-localhost``. Credentials reach Flower through ``FLOWER_BASIC_AUTH`` in this process's
environment (Flower reads it at start), never through the command line (``ps`` shows argv) or a log line.
A password still set to an example value (``.env.example``'s ``admin:change-me-flower``, the docs'
``admin:s3cret``) is refused like a missing one, unless ``--allow-example-passwords`` says this is a demo.

Example:
    >>> from modelpress.settings import Settings
    >>> argv, env = flower_command(Settings(home="/tmp/mp-doc", flower_basic_auth="admin:pw"),
    ...                            address="127.0.0.1", port=5555)
    >>> argv[:3], sorted(env)
    (['flower', '--address=127.0.0.1', '--port=5555'], ['FLOWER_BASIC_AUTH'])
"""

from __future__ import annotations

import logging
import os
import sys

from modelpress.settings import Settings

log = logging.getLogger(__name__)

LOCAL_ADDRESSES = frozenset({"127.0.0.1", "localhost", "::1"})
# The tasks page shows args (the job id) and when each task started, next to Flower's defaults.
TASK_COLUMNS = "name,uuid,state,args,received,started,runtime,worker"


class FlowerConfigError(ValueError):
    """Flower would start unprotected, or the credentials are malformed; the message says what to set."""


def check_credentials(value: str) -> int:
    """Validate ``user:password[,user2:password2]``; returns how many credentials there are.

    The message never repeats the value (it is a secret).

    Example:
        >>> check_credentials("admin:s3cret")
        1
    """
    creds = value.split(",")
    for c in creds:
        user, sep, password = c.partition(":")
        if not (sep and user.strip() and password):
            raise FlowerConfigError("MODELPRESS_FLOWER_BASIC_AUTH must be user:password (several: comma-separated), "
                                    "each with a non-empty user and password")
    return len(creds)


def check_example_passwords(settings: Settings, *, allow: bool = False) -> None:
    """``FlowerConfigError`` (one line naming the variable) when a secret is an example value and no demo flag.

    Example:
        >>> check_example_passwords(Settings(home="/tmp/mp-doc", flower_basic_auth="ops:Zq8-real-one"))
        >>> check_example_passwords(Settings(home="/tmp/mp-doc", flower_basic_auth="admin:s3cret"))
        Traceback (most recent call last):
        ...
        modelpress.workers.flower.FlowerConfigError: `modelpress flower` refuses to start: MODELPRESS_FLOWER_BASIC_AUTH ...
    """
    refusal = None if allow else settings.example_password_refusal("flower")
    if refusal:
        raise FlowerConfigError(refusal)
    for warning in settings.placeholder_secrets():
        print(f"warning: {warning} (allowed by --allow-example-passwords)", file=sys.stderr)


def flower_command(settings: Settings, *, address: str, port: int,
                   insecure_localhost: bool = False) -> tuple[list[str], dict[str, str]]:
    """Flower's argv (for ``app.start``) and the environment it needs, or ``FlowerConfigError``.

    Example:
        >>> flower_command(Settings(home="/tmp/mp-doc"), address="0.0.0.0", port=5555)
        Traceback (most recent call last):
        ...
        modelpress.workers.flower.FlowerConfigError: Flower needs credentials: ...
    """
    secret = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    env: dict[str, str] = {}
    if secret:
        check_credentials(secret)
        env["FLOWER_BASIC_AUTH"] = secret
    elif not insecure_localhost:
        raise FlowerConfigError("Flower needs credentials: set MODELPRESS_FLOWER_BASIC_AUTH=user:password "
                                "(or, on this machine only, pass --insecure-localhost with --address 127.0.0.1)")
    elif address not in LOCAL_ADDRESSES:
        raise FlowerConfigError(f"--insecure-localhost serves Flower without a password, so it binds only to "
                                f"127.0.0.1/localhost/::1, not {address!r}; set MODELPRESS_FLOWER_BASIC_AUTH "
                                "to serve it elsewhere")
    argv = ["flower", f"--address={address}", f"--port={port}", f"--tasks_columns={TASK_COLUMNS}"]
    return argv, env


def run_flower(settings: Settings, *, address: str, port: int, insecure_localhost: bool = False) -> int:
    """Start Flower (blocks). Raises ``FlowerConfigError`` before anything starts if it would be unsafe.

    Example:
        >>> run_flower(Settings(), address="127.0.0.1", port=5555)  # doctest: +SKIP
    """
    argv, env = flower_command(settings, address=address, port=port, insecure_localhost=insecure_localhost)
    from modelpress.workers.app import make_app

    # Ours win over any FLOWER_* already in the environment: the settings are the one source.
    os.environ.pop("FLOWER_BASIC_AUTH", None)
    os.environ.update(env)
    print(f"modelpress flower: http://{address}:{port}/ with "
          f"{'basic auth' if env else 'NO AUTHENTICATION (--insecure-localhost)'}; "
          "/metrics and /healthcheck are open to anyone who can reach this address", file=sys.stderr, flush=True)
    app = make_app(settings)
    return int(app.start(argv=argv) or 0)
