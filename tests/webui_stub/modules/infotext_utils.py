"""Stand-in of modules/infotext_utils.py: the infotext format and what pasting it does.

The last line holds ``key: value`` pairs separated by commas; a value with a comma, colon or newline is
written as a JSON string. On paste, every pair whose key is the ``infotext`` name of an option (and is
not taken by a paste field) becomes an "Override settings" entry when its value differs from the
current one; generating then sends those entries as ``override_settings``.
"""

import json
import re

from modules import shared

# key: letters, digits, spaces, '-', '/'; value: a JSON string, or anything up to the next comma
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    text = str(text)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",\n:") else text


def unquote(text):
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_generation_parameters(text: str) -> dict:
    """Prompt, negative prompt and the pairs of the last line (when it has at least 3)."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    res = {key: unquote(value) for key, value in _PAIR.findall(last)}
    res["Prompt"], res["Negative prompt"] = "\n".join(prompt), "\n".join(negative)
    return res


def _infotext_settings():
    return [(info.infotext, key) for key, info in shared.opts.data_labels.items() if getattr(info, "infotext", None)]


def get_override_settings(params: dict, *, skip_fields=None) -> list:
    """(infotext name, setting, value) for each pasted pair that would change a setting."""
    res = []
    for name, key in _infotext_settings():
        if name in (skip_fields or {}) or params.get(name) is None:
            continue
        value = type(shared.opts.data_labels[key].default)(params[name])
        if value != getattr(shared.opts, key, None):
            res.append((name, key, value))
    return res


def create_override_settings_dict(text_pairs) -> dict:
    """The "Override settings" dropdown's entries ("Skip Early CFG: 1.0") as ``override_settings``."""
    pairs = dict(pair.split(":", 1) for pair in text_pairs)
    pairs = {k: v.strip() for k, v in pairs.items()}
    return {key: type(shared.opts.data_labels[key].default)(pairs[name])
            for name, key in _infotext_settings() if name in pairs}
