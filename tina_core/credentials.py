"""Credentials: what looks like one, and masking it wherever tina writes or shows anything.

One mechanism for design invariant 6. A credential is a value whose name looks like one
(``is_secret_name``: HF_TOKEN, WANDB_API_KEY, grpo.hub_token, a *_password...), in the process's
environment or in a recipe, or any value this process was told is one (``remember_secrets``).
Every writer masks them as ``***``: by key name in JSON-like records (``redact``) and by value in
any text (``redact_text``).

Light: the standard library only (the CLI and the cockpit import it at start-up).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable

MASK = "***"
# Shorter values are not masked inside text: "1" or "true" would be replaced everywhere.
MIN_SECRET_LEN = 6
# A name's words (snake_case, kebab-case, dotted, camelCase): "hubToken" -> hub, token.
_WORD_RE = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# Words that make any name a credential's, wherever they stand...
_SECRET_WORDS = frozenset({"secret", "secrets", "password", "passwd", "passphrase", "credential", "credentials",
                           "apikey", "authorization"})
# ...and words that do when "key" follows them anywhere: AWS_ACCESS_KEY_ID, API_KEY_V2.
_KEY_KINDS = frozenset({"api", "access", "private", "secret", "signing"})
# ...and words that do as the last one: HF_TOKEN, WANDB_API_KEY, hub_token, BASIC_AUTH. Not
# TOKENIZERS_PARALLELISM or max_prompt_tokens (settings), nor token_indices (a LoRA option).
_SECRET_LAST_WORDS = frozenset({"token", "key", "auth", "pat"})
# Credential values this process learnt from elsewhere than its environment: a recipe's
# credential fields (load_recipe remembers them), so everything this process writes masks them too.
_remembered: set[str] = set()


def is_secret_name(name: str) -> bool:
    """Whether a variable or recipe key of this name holds a credential."""
    words = [w.lower() for w in _WORD_RE.findall(str(name))]
    return bool(words) and (words[-1] in _SECRET_LAST_WORDS or not _SECRET_WORDS.isdisjoint(words)
                            or any(a in _KEY_KINDS and b == "key" for a, b in zip(words, words[1:])))


def is_secret_value(value: Any) -> bool:
    """Whether a value under a credential's name is one to withhold (text or a number; not a
    switch or an empty setting)."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != ""


def remember_secrets(values: Iterable[Any]) -> None:
    """Mask these values in everything this process writes or shows from now on."""
    _remembered.update(s for s in map(str, values) if len(s) >= MIN_SECRET_LEN and s != MASK)


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """The credential values to mask: those of credential-named variables in ``environ`` (default
    os.environ) and the remembered ones, longest first (so a value containing another goes whole)."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LEN} | _remembered
    return sorted(found, key=len, reverse=True)


def redact_text(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace every credential value (``secret_values``) with ``***``."""
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    return text


def redact(obj: Any, environ: dict[str, str] | None = None) -> Any:
    """A copy of ``obj`` (JSON-like) with credential values and credential-named keys masked."""
    if isinstance(obj, dict):
        return {k: (MASK if isinstance(k, str) and is_secret_name(k) and is_secret_value(v) else redact(v, environ))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, environ) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, environ)
    return obj


def secret_fields(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted.path: value}`` of every credential-named field in a nested mapping (a recipe)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            path = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(secret_fields(v, path + "."))
            elif is_secret_name(str(k)) and is_secret_value(v):
                out[path] = v
    return out
