"""Secrets out of every record: the one function that cleans a command line or a mapping of arguments before it is
written anywhere (run_args.json, model cards, tracker hyper-parameters, results.json, pipeline files).

Rules (docs/training.md, "Secrets"): the value of a flag or key whose name holds a secret word (token, key, secret,
password, auth, credential, cookie) is replaced, and so is any value that looks like a token (known prefixes such as
``hf_``, ``sk-``, ``ghp_``, a password in a URL, or a long mixed-case letters-and-digits string).
"""

from __future__ import annotations

import math
import re
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "<redacted>"
# a name part that ends with one of these words marks a secret (hub_token, api_key, apikey, db_password, ...)
SECRET_WORD_ENDINGS = ("token", "key", "secret", "password", "passwd")
SECRET_WORDS = frozenset({"auth", "authorization", "pwd", "credential", "credentials", "cookie", "bearer"})
TOKEN_PATTERNS = re.compile("|".join((
    r"\bhf_[A-Za-z0-9]{10,}",                      # Hugging Face
    r"\bapi_org_[A-Za-z0-9]{10,}",                 # Hugging Face organisation
    r"\bsk-[A-Za-z0-9_\-]{10,}",                   # OpenAI and compatible servers
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",               # GitHub
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bglpat-[A-Za-z0-9_\-]{20,}",                # GitLab
    r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",            # Slack
    r"\bAKIA[0-9A-Z]{16}\b",                       # AWS access key id
    r"(?i:\bbearer\s+)[A-Za-z0-9._~+/=\-]{8,}",   # an Authorization header
)))
URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@")
LONG_RUN = re.compile(r"[A-Za-z0-9+=]{32,}")
MIN_ENTROPY_BITS = 3.5  # per character; a 40-hex-digit hash has at most 4, but it is never mixed-case


def is_secret_name(name: str) -> bool:
    """Whether a flag or key name (``--hub_token``, ``api-key``, ``HF_TOKEN``) names a secret."""
    parts = [p for p in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()) if p]
    return any(p.endswith(SECRET_WORD_ENDINGS) or p in SECRET_WORDS for p in parts)


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def _looks_random(run: str) -> bool:
    """A long run of letters and digits with upper case, lower case and digits, and high entropy: a bare token."""
    return (any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run)
            and _entropy(run) >= MIN_ENTROPY_BITS)


def redact_text(text: str) -> str:
    """`text` with every token-like part replaced (the rest kept: paths and names stay readable)."""
    text = TOKEN_PATTERNS.sub(REDACTED, text)
    text = URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return LONG_RUN.sub(lambda m: REDACTED if _looks_random(m.group(0)) else m.group(0), text)


def redact(value: Any, name: str = "") -> Any:
    """A copy of `value` safe to write: a command line (a list of argument strings), a mapping of arguments, a list,
    or a scalar; `name` is the key or flag the value belongs to. Non-strings other than containers pass unchanged."""
    if name and is_secret_name(name) and not _empty(value):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return redact_argv(value) if all(isinstance(v, str) for v in value) else [redact(v) for v in value]
    return value


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line with the values of secret flags (``--hub_token X``, ``--hub_token=X``, and every value after
    such a flag up to the next flag) and token-like strings replaced."""
    out: list[str] = []
    secret_flag = False
    for arg in argv:
        if arg.startswith("-") and len(arg) > 1 and not _is_number(arg):
            name, eq, _ = arg.lstrip("-").partition("=")
            secret_flag = is_secret_name(name)
            out.append(f"{arg.split('=', 1)[0]}={REDACTED}" if eq and secret_flag else redact_text(arg))
            secret_flag = secret_flag and not eq
        else:
            out.append(REDACTED if secret_flag else redact_text(arg))
    return out


def redact_command(command: str) -> str:
    """A shell command line (one string) with its secrets replaced, re-quoted with `shlex`."""
    try:
        return shlex.join(redact_argv(shlex.split(command)))
    except ValueError:  # unbalanced quotes: not a shell line, clean it as text
        return redact_text(command)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def _is_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True
