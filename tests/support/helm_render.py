"""Render a Helm chart without Helm: the subset of Go templates and Sprig our chart uses.

Helm is not installable here (no Debian package on bookworm; the PyPI bindings ``helm-sdkpy``
need Python 3.12 and offer no ``template``), so the tests render ``deploy/helm/flowwarden``
with this interpreter and validate the output as ``helm template | kubernetes-validate
--strict`` would. It implements Go's ``text/template`` semantics for what the chart uses and
refuses anything else by name, so a template construct it does not know fails the test
instead of rendering wrongly:

* actions ``{{ }}`` with ``{{-``/``-}}`` trimming, comments ``{{/* */}}``;
* ``if``/``else if``/``else``, ``range`` (lists and maps, with ``$k, $v :=``), ``with``,
  ``define`` and ``include``, variables (``$x :=``, ``$``);
* pipelines and parenthesised calls; functions ``include toYaml toJson nindent indent quote
  squote default required printf replace trunc trimSuffix trimPrefix lower upper base list
  dict hasKey empty eq ne not and or int toString join b64enc``;
* ``.Values .Release .Chart .Capabilities .Files.Get .Files.Glob``.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class TemplateError(Exception):
    pass


# --------------------------------------------------------------------------- lexing

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<assign>:=|=)
      | (?P<punct>[|(),])
      | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
      | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot read {text[pos:]!r} in {{{{ {text} }}}}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


# --------------------------------------------------------------------------- parsing


@dataclass
class Node:
    kind: str  # text | action | if | range | with | define
    text: str = ""
    expr: list[tuple[str, str]] = field(default_factory=list)
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)
    name: str = ""


def _split(src: str) -> list[tuple[str, str]]:
    """Text and action pieces with Go's whitespace trimming applied."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            while pos < len(src) and src[pos].isspace():
                pos += 1
    pieces.append(("text", src[pos:]))
    return [p for p in pieces if p[0] == "action" or p[1]]


def parse(src: str, defines: dict[str, list[Node]]) -> list[Node]:
    pieces = _split(src)
    nodes, i = _parse_block(pieces, 0, defines, top=True)
    assert i == len(pieces)
    return nodes


def _parse_block(
    pieces: list[tuple[str, str]], i: int, defines: dict[str, list[Node]], top: bool = False
) -> tuple[list[Node], int]:
    out: list[Node] = []
    while i < len(pieces):
        kind, text = pieces[i]
        if kind == "text":
            out.append(Node("text", text=text))
            i += 1
            continue
        if text.startswith("/*"):
            i += 1
            continue
        word = text.split(None, 1)[0] if text else ""
        rest = text[len(word) :].strip()
        if word in ("end", "else"):
            if top:
                raise TemplateError(f"unexpected {{{{ {text} }}}}")
            return out, i
        if word in ("if", "range", "with"):
            node = Node(word, expr=_tokens(rest))
            node.body, i = _parse_block(pieces, i + 1, defines)
            _, closing = pieces[i]
            if closing.startswith("else if"):
                # else if X ... : an if nested in the else branch, sharing the one end
                nested_text = closing[len("else ") :]
                pieces = [*pieces[:i], ("action", "else"), ("action", nested_text), *pieces[i + 1 :]]
                pieces.insert(_matching_end(pieces, i + 1), ("action", "end"))
                _, closing = pieces[i]
            if closing == "else":
                node.orelse, i = _parse_block(pieces, i + 1, defines)
                _, closing = pieces[i]
            if closing != "end":
                raise TemplateError(f"{{{{ {word} }}}} closed by {{{{ {closing} }}}}")
            out.append(node)
            i += 1
            continue
        if word == "define":
            name = json.loads(rest)
            body, i = _parse_block(pieces, i + 1, defines)
            defines[name] = body
            i += 1
            continue
        out.append(Node("action", expr=_tokens(text)))
        i += 1
    if not top:
        raise TemplateError("missing {{ end }}")
    return out, i


def _matching_end(pieces: list[tuple[str, str]], start: int) -> int:
    """Index of the {{ end }} closing the block opened at ``start``."""
    depth = 0
    for j in range(start, len(pieces)):
        kind, text = pieces[j]
        if kind != "action":
            continue
        word = text.split(None, 1)[0] if text else ""
        if word in ("if", "range", "with", "define"):
            depth += 1
        elif word == "end":
            depth -= 1
            if depth == 0:
                return j
    raise TemplateError("missing {{ end }}")


# --------------------------------------------------------------------------- evaluation


def _truthy(v: Any) -> bool:
    return v not in (None, False, 0, "", [], {}) and not (isinstance(v, dict | list | str) and len(v) == 0)


def _to_yaml(v: Any) -> str:
    if v is None or v == {} or v == []:
        return "{}" if isinstance(v, dict) or v is None else "[]"
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True, width=10**6).rstrip("\n")


def _indent(n: int, s: Any) -> str:
    pad = " " * int(n)
    return "\n".join(pad + line for line in str(s).split("\n"))


def _quote(*vs: Any) -> str:
    return " ".join(json.dumps("" if v is None else _go_str(v)) for v in vs)


def _go_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _printf(fmt: str, *args: Any) -> str:
    py = re.sub(r"%v", "%s", fmt)
    return py % tuple(_go_str(a) if isinstance(a, bool) else a for a in args)


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root

    def Get(self, path: str) -> str:  # Helm's name
        p = self.root / path
        if not p.is_file():
            return ""
        return p.read_text()

    def Glob(self, pattern: str) -> dict[str, str]:  # Helm's name
        found = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and fnmatch.fnmatch(rel, pattern):
                found[rel] = p.read_text()
        return found


class Renderer:
    def __init__(self, chart_dir: Path, values: dict[str, Any], release: str, namespace: str) -> None:
        self.chart_dir = chart_dir
        chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
        self.root: dict[str, Any] = {
            "Values": values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": True},
            "Chart": {
                "Name": chart["name"],
                "Version": chart["version"],
                "AppVersion": str(chart.get("appVersion", "")),
            },
            "Capabilities": {"KubeVersion": {"Version": "v1.37.0", "Major": "1", "Minor": "37"}},
            "Files": Files(chart_dir),
            "Template": {"BasePath": f"{chart['name']}/templates"},
        }
        self.defines: dict[str, list[Node]] = {}
        self.funcs: dict[str, Callable[..., Any]] = {
            "toYaml": _to_yaml,
            "toJson": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
            "nindent": lambda n, s: "\n" + _indent(n, s),
            "indent": _indent,
            "quote": _quote,
            "squote": lambda v: "'" + _go_str(v) + "'",
            "default": lambda d, v=None: v if _truthy(v) else d,
            "required": self._required,
            "printf": _printf,
            "replace": lambda old, new, s: str(s).replace(old, new),
            "trunc": lambda n, s: str(s)[: int(n)],
            "trimSuffix": lambda suf, s: str(s).removesuffix(suf),
            "trimPrefix": lambda pre, s: str(s).removeprefix(pre),
            "lower": lambda s: str(s).lower(),
            "upper": lambda s: str(s).upper(),
            "base": lambda s: str(s).rsplit("/", 1)[-1],
            "list": lambda *vs: list(vs),
            "dict": lambda *kv: {kv[i]: kv[i + 1] for i in range(0, len(kv), 2)},
            "hasKey": lambda d, k: k in d,
            "empty": lambda v: not _truthy(v),
            "eq": lambda a, *bs: any(a == b for b in bs),
            "ne": lambda a, b: a != b,
            "not": lambda v: not _truthy(v),
            "int": lambda v: int(v),
            "toString": _go_str,
            "join": lambda sep, vs: sep.join(_go_str(v) for v in vs),
            "b64enc": lambda s: base64.b64encode(str(s).encode()).decode(),
        }

    @staticmethod
    def _required(msg: str, v: Any) -> Any:
        if not _truthy(v):
            raise TemplateError(f"required: {msg}")
        return v

    # ------------------------------------------------------------------ expressions

    def _field(self, base: Any, path: list[str]) -> Any:
        for part in path:
            if base is None:
                return None
            if isinstance(base, dict):
                base = base.get(part)
            elif hasattr(base, part):
                base = getattr(base, part)
            else:
                raise TemplateError(f"cannot read field {part} of {type(base).__name__}")
        return base

    def _operand(self, tok: tuple[str, str], dot: Any, scope: dict[str, Any]) -> Any:
        kind, text = tok
        if kind == "str":
            return json.loads(text) if text.startswith('"') else text[1:-1]
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "field":
            return dot if text == "." else self._field(dot, text[1:].split("."))
        if kind == "var":
            name, *path = text.split(".")
            if name not in scope:
                raise TemplateError(f"undefined variable {name}")
            return self._field(scope[name], path)
        if kind == "ident":
            if text in ("true", "false"):
                return text == "true"
            if text == "nil":
                return None
            return self._call(text, [], dot, scope)
        raise TemplateError(f"unexpected {text!r}")

    def _call(self, name: str, args: list[Any], dot: Any, scope: dict[str, Any]) -> Any:
        if name == "include":
            tpl, ctx = args
            if tpl not in self.defines:
                raise TemplateError(f"include: no template {tpl!r}")
            return self._render(self.defines[tpl], ctx, {"$": scope["$"]})
        if name == "and":
            result: Any = True
            for a in args:
                result = a
                if not _truthy(a):
                    return a
            return result
        if name == "or":
            for a in args:
                if _truthy(a):
                    return a
            return args[-1] if args else None
        if name not in self.funcs:
            raise TemplateError(f"function {name!r} is not supported by this renderer")
        return self.funcs[name](*args)

    def _group(self, toks: list[tuple[str, str]]) -> list[Any]:
        """Nest parenthesised sub-pipelines: tokens become items or lists (a sub-pipeline)."""
        stack: list[list[Any]] = [[]]
        for tok in toks:
            if tok == ("punct", "("):
                stack.append([])
            elif tok == ("punct", ")"):
                inner = stack.pop()
                stack[-1].append(("sub", inner))
            else:
                stack[-1].append(tok)
        if len(stack) != 1:
            raise TemplateError("unbalanced parentheses")
        return stack[0]

    def _pipeline(self, items: list[Any], dot: Any, scope: dict[str, Any]) -> Any:
        commands: list[list[Any]] = [[]]
        for it in items:
            if it == ("punct", "|"):
                commands.append([])
            else:
                commands[-1].append(it)
        value: Any = None
        for n, cmd in enumerate(commands):
            value = self._command(cmd, dot, scope, piped=value if n else _NOTHING)
        return value

    def _command(self, cmd: list[Any], dot: Any, scope: dict[str, Any], piped: Any) -> Any:
        if not cmd:
            raise TemplateError("empty command")
        head = cmd[0]

        def arg(it: Any) -> Any:
            if it[0] == "sub":
                return self._pipeline(it[1], dot, scope)
            return self._operand(it, dot, scope)

        if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
            args = [arg(it) for it in cmd[1:]]
            if piped is not _NOTHING:
                args.append(piped)
            return self._call(head[1], args, dot, scope)
        if head[0] in ("field", "var") and head[1] not in (".", "$") and len(cmd) > 1:  # .Files.Get "x"
            if head[0] == "field":
                *path, method = head[1][1:].split(".")
                target = self._field(dot, path)
            else:
                name, *path, method = head[1].split(".")
                target = self._field(scope[name], path)
            args = [arg(it) for it in cmd[1:]]
            if piped is not _NOTHING:
                args.append(piped)
            return getattr(target, method)(*args)
        if len(cmd) != 1 or piped is not _NOTHING:
            raise TemplateError(f"cannot apply {cmd}")
        return arg(head)

    def _eval(self, toks: list[tuple[str, str]], dot: Any, scope: dict[str, Any]) -> tuple[Any, list[str]]:
        """Evaluate an action's tokens; returns the value and any variables it declares."""
        names: list[str] = []
        if len(toks) >= 2 and toks[0][0] == "var" and toks[1][0] == "assign":
            names, toks = [toks[0][1]], toks[2:]
        elif len(toks) >= 4 and toks[0][0] == "var" and toks[1] == ("punct", ",") and toks[3][0] == "assign":
            names, toks = [toks[0][1], toks[2][1]], toks[4:]
        return self._pipeline(self._group(toks), dot, scope), names

    # ------------------------------------------------------------------ rendering

    def _render(self, nodes: list[Node], dot: Any, scope: dict[str, Any]) -> str:
        out: list[str] = []
        scope = dict(scope)
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                value, names = self._eval(node.expr, dot, scope)
                if names:
                    scope[names[0]] = value
                elif value is not None:
                    out.append(_go_str(value))
            elif node.kind in ("if", "with"):
                value, _ = self._eval(node.expr, dot, scope)
                if _truthy(value):
                    out.append(self._render(node.body, value if node.kind == "with" else dot, scope))
                else:
                    out.append(self._render(node.orelse, dot, scope))
            elif node.kind == "range":
                value, names = self._eval(node.expr, dot, scope)
                items = (
                    list(sorted(value.items())) if isinstance(value, dict) else list(enumerate(value or []))
                )
                if not items:
                    out.append(self._render(node.orelse, dot, scope))
                for k, v in items:
                    inner = dict(scope)
                    if len(names) == 2:
                        inner[names[0]], inner[names[1]] = k, v
                    elif names:
                        inner[names[0]] = v
                    out.append(self._render(node.body, v, inner))
        return "".join(out)

    def render(self) -> dict[str, str]:
        """Template name -> rendered text, for every template that is not a helper."""
        tdir = self.chart_dir / "templates"
        parsed = {}
        for path in sorted(tdir.rglob("*")):
            if path.is_file() and path.suffix in (".yaml", ".yml", ".tpl", ".txt"):
                parsed[path.relative_to(self.chart_dir).as_posix()] = parse(path.read_text(), self.defines)
        out = {}
        for name, nodes in parsed.items():
            if Path(name).name.startswith("_") or name.endswith(".tpl"):
                continue
            out[name] = self._render(nodes, self.root, {"$": self.root})
        return out


_NOTHING = object()


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of ``--set``/``-f`` values over the chart's defaults (maps merge)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge_values(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render_chart(
    chart_dir: Path,
    values: dict[str, Any] | None = None,
    *,
    release: str = "flowwarden",
    namespace: str = "flowwarden",
) -> list[dict[str, Any]]:
    """Every manifest the chart renders with ``values`` over its defaults (``helm template``)."""
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}
    renderer = Renderer(chart_dir, merge_values(defaults, values or {}), release, namespace)
    docs: list[dict[str, Any]] = []
    for name, text in renderer.render().items():
        if name.endswith("NOTES.txt"):
            continue  # shown after an install, not a manifest
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise TemplateError(f"{name}: rendered text is not YAML: {exc}\n{text}") from exc
        docs.extend(d for d in loaded if d)
    return docs
