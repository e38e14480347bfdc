"""Compel's prompt syntax, checked before Compel sees it: Compel accepts malformed prompts silently
(an unclosed "(" is read as text), so a mistake is reported here with the column where it is.
Torch-free: the window and the CLI check prompts before any model is loaded."""

from negalora.errors import BadPrompt

_OPEN = {"(": ")", "[": "]"}
_CLOSE = {")": "(", "]": "["}


def check_prompt(prompt: str) -> None:
    """Raise BadPrompt for unbalanced brackets or quotes; backslash escapes a character."""
    stack: list[tuple[str, int]] = []
    quote_at: int | None = None
    i = 0
    while i < len(prompt):
        ch = prompt[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            quote_at = None if quote_at is not None else i
        elif ch in _OPEN:
            stack.append((ch, i))
        elif ch in _CLOSE:
            if not stack:
                raise BadPrompt(prompt, i, f"unmatched {ch!r}")
            opener, at = stack.pop()
            if opener != _CLOSE[ch]:
                raise BadPrompt(prompt, i, f"{ch!r} closes {opener!r} from column {at + 1}")
        i += 1
    if quote_at is not None:
        raise BadPrompt(prompt, quote_at, "unclosed '\"'")
    if stack:
        opener, at = stack[-1]
        raise BadPrompt(prompt, at, f"unclosed {opener!r}")
    _check_calls(prompt)


def _check_calls(prompt: str) -> None:
    """``.blend()`` needs one weight per prompt; ``.and()`` / ``.blend()`` need a (…) group before them."""
    for method in (".blend(", ".and("):
        start = 0
        while (at := prompt.find(method, start)) >= 0:
            start = at + 1
            if at == 0 or prompt[at - 1] != ")":
                raise BadPrompt(prompt, at, f'{method[:-1]}() must follow a ("…", "…") group')
            if method == ".blend(":
                close = prompt.find(")", at)
                args = [a for a in prompt[at + len(method) : close].split(",") if a.strip()]
                group_start = _group_start(prompt, at - 1)
                n_prompts = prompt[group_start:at].count('"') // 2
                if args and n_prompts and len(args) != n_prompts:
                    raise BadPrompt(prompt, at, f".blend() has {len(args)} weights for {n_prompts} prompts")
                for arg in args:
                    try:
                        float(arg)
                    except ValueError:
                        raise BadPrompt(prompt, at, f".blend() weight {arg.strip()!r} is not a number") from None


def _group_start(prompt: str, close_at: int) -> int:
    depth = 0
    for i in range(close_at, -1, -1):
        if prompt[i] == ")":
            depth += 1
        elif prompt[i] == "(":
            depth -= 1
            if depth == 0:
                return i
    return 0
