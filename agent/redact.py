"""Redaction: masks secrets and personal data in log text, in linear time.

Every rule, built-in or user-written, runs on RE2, so no pattern can
backtrack catastrophically on a hostile line. A rule's pattern may hold
capturing groups: then only the first group that took part in the match (the
*value*; for custom rules the group named ``value``) is replaced, and the
rest of the match (a key name, a header, a URL's scheme and user) stays, so
``password=hunter2`` becomes ``password=[REDACTED:password]``.

Fast path: one ``re2.Set`` match per text, or for :meth:`Redactor.redact_lines`
one search over the whole batch joined by newlines; the binding's per-call
cost dominates short lines, so the batch call is several times faster. Only
texts that match go on to the per-rule searches, and validators (Luhn,
mod-97, ...) run only on those candidates. Overlaps resolve leftmost-first,
then by rule order (custom rules first). The RE2 programs are compiled on their
first use, and ASCII text (most logs) uses the rules' ASCII forms, which match
the same and compile to a fraction of the e-mail rule's Unicode program (see
:class:`_Programs`); rule errors are still found when the configuration loads.

Private keys spread over lines are masked by ``agent.redact_blocks`` with one
:class:`BlockState` per stream: ``redact_lines(lines, state)`` carries it from
one batch to the next. The log tailer keeps one per file (:meth:`Redactor.streams`),
``hostwatch redact`` one for its input, so both give the same output.

Wiring: the runtime builds one :class:`Redactor` with :meth:`Redactor.from_config`
and hands it to collectors as ``context.redactor``; ``hostwatch redact`` runs
:func:`redact_stream`; the CLI feeds ``agent.secrets.config_secrets`` to the log
handler's ``SecretMask`` so the agent's own secrets never reach its logs.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import logging
import os
import re
import secrets as _random
from bisect import bisect_right
from collections.abc import Callable, Iterable
from itertools import accumulate, chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import re2

from agent.redact_blocks import HINT, HINT_SEARCH, BlockState, mask_blocks
from agent.redact_rules import BUILTIN_SETS, Rule

if TYPE_CHECKING:
    from agent import plugin

log = logging.getLogger("hostwatch.redact")

KEY_FILE = "redaction.key"
MAX_MEM = 64 << 20  # RE2's budget per compiled program; the default 8 MiB is tight for the union
HASH_HEX = 12
BLOCK_RULE = "private-key"  # the built-in rule whose lines agent.redact_blocks masks across lines
MAX_STREAMS = 4096  # streams remembered inside a key block by Streams (files, in the tailer)

# ------------------------------------------------------------------ compiling


def _options(*, capture: bool = True) -> re2.Options:
    options = re2.Options()
    options.max_mem = MAX_MEM
    options.log_errors = False  # errors come back as config errors, not on stderr
    options.never_capture = not capture
    return options


def _re2_message(exc: re2.error) -> str:
    message = exc.args[0] if exc.args else str(exc)
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)


def _selected_rules(section: Any, errors: list[str]) -> list[Rule]:
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for i, raw in enumerate(section.rules):
        where = f"redaction.rules[{i}] ({raw.name})"
        if not raw.name.strip():
            errors.append(f"redaction.rules[{i}].name: must not be empty")
        elif raw.name in names:
            errors.append(f"{where}.name: already used by redaction.rules[{names[raw.name]}]")
        names.setdefault(raw.name, i)
        try:
            compiled = re2.compile(raw.pattern, _options())
        except re2.error as exc:
            errors.append(f"{where}.pattern: {_re2_message(exc)}")
            continue
        if compiled.search(b"") is not None:
            errors.append(f"{where}.pattern: matches the empty string, so it would match everywhere")
            continue
        rules.append(Rule(raw.name, raw.pattern, replace=raw.replace or None, custom=True))
    for i, name in enumerate(section.sets):
        if name not in BUILTIN_SETS:
            close = difflib.get_close_matches(name, list(BUILTIN_SETS), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(BUILTIN_SETS)}"
            errors.append(f"redaction.sets[{i}]: unknown set {name!r}; {hint}")
        elif name not in section.sets[:i]:
            rules.extend(BUILTIN_SETS[name])
    return rules


def check_rules(section: Any) -> list[str]:
    """Config errors of a ``[redaction]`` section: unknown sets, patterns RE2 rejects."""
    errors: list[str] = []
    rules = _selected_rules(section, errors)
    if not errors and any(rule.custom for rule in rules):
        # the built-in sets fit together (test_redact_compile.py compiles them all); custom rules may not:
        # found here, at load, not when the first line needs the programs
        try:
            _Compiled(rules).full.compile_all()
        except re2.error as exc:
            errors.append(f"redaction: the rules together exceed RE2's limits: {_re2_message(exc)}")
    return errors


class _Programs:
    """The RE2 programs of the rules over one alphabet: each rule alone, their union as a Set, and a batch scanner.

    Each is compiled on its first use, not here: building the default rules' programs and their
    automata is most of what redaction costs before the first line is shipped, and a text needs
    only the rules its Set match names. ``search[i]``, ``set_match`` and ``scan_from`` start as
    stubs that compile the program and put the compiled call in their own place, so later calls
    cost what they did before. Two threads that race on a first use both compile it; either result
    is the same program. Compiling cannot fail here for a configuration that loaded:
    :func:`check_rules` compiles what custom rules bring, ``test_redact_compile.py`` the built-in ones.
    """

    def __init__(self, rules: list[Rule], patterns: list[str]) -> None:
        self.rules = rules
        self.patterns = patterns
        # (the search of rule i, and which of its groups hold the value, are set together on its first search)
        self.search: list[Callable[[bytes, int], list[tuple[int, int]] | None]] = [
            self._first_search(i) for i in range(len(patterns))
        ]
        self.value_groups: list[tuple[int, ...]] = [()] * len(patterns)
        self.set_match: Callable[[bytes], list[int] | None] = self._first_set_match
        self.scan_from: Callable[[bytes, int], int] = self._first_scan
        self._finding: dict[str, Callable[[bytes, int], int] | None] = {}  # scan_finding's programs, by pattern

    def compile_all(self) -> None:
        """Every program now (the configuration check)."""
        self._compile_set()
        self._compile_scan()
        for i in range(len(self.patterns)):
            self._compile_rule(i)

    def _first_search(self, i: int) -> Callable[[bytes, int], list[tuple[int, int]] | None]:
        def first(data: bytes, pos: int) -> list[tuple[int, int]] | None:
            return self._compile_rule(i)(data, pos)

        return first

    def _compile_rule(self, i: int) -> Callable[[bytes, int], list[tuple[int, int]] | None]:
        regex = re2.compile(self.patterns[i], _options())
        if self.rules[i].custom:
            index = regex.groupindex.get("value")
            self.value_groups[i] = (index,) if index else ()
        else:
            self.value_groups[i] = tuple(range(1, regex.groups + 1))
        search = self.search[i] = _searcher(regex)
        return search

    def _first_set_match(self, data: bytes) -> list[int] | None:
        return self._compile_set()(data)

    def _compile_set(self) -> Callable[[bytes], list[int] | None]:
        compiled = re2.Set.SearchSet(_options(capture=False))
        for pattern in self.patterns:
            compiled.Add(pattern)
        compiled.Compile()
        self.set_match = compiled.Match
        return compiled.Match

    def _first_scan(self, data: bytes, pos: int) -> int:
        return self._compile_scan()(data, pos)

    def _compile_scan(self) -> Callable[[bytes, int], int]:
        # (?m): in a batch a record starts after "\n", so ^ and $ must match at line ends
        # there; the batch scan only has to find every record that may match.
        scan = self.scan_from = _starter(re2.compile("(?m)" + self._union(), _options(capture=False)))
        return scan

    def _union(self) -> str:
        return "|".join(f"(?:{pattern})" for pattern in self.patterns) or r"[^\x00-\x{10FFFF}]"

    def scan_finding(self, find: str) -> Callable[[bytes, int], int] | None:
        """``scan_from`` of the rules' union and ``find`` together: where the next match of either
        begins. One pass of RE2 costs about the same for the union with ``find`` as without it.

        None when that program does not compile: the configuration check compiled the union alone,
        and rules near RE2's memory budget may leave no room for ``find`` (the caller then scans for
        the rules and ``find`` apart, as it would without this)."""
        if find not in self._finding:
            try:
                regex = re2.compile(f"(?m){self._union()}|(?:{find})", _options(capture=False))
            except re2.error:
                self._finding[find] = None
            else:
                self._finding[find] = _starter(regex)
        return self._finding[find]


class _Compiled:
    """The rules' programs for any text (``full``) and for ASCII text (``ascii``: the rules' ASCII forms).

    ASCII text goes to ``ascii``, which finds the same matches (see ``Rule.ascii_pattern``)
    with smaller programs; ``full`` is compiled only when non-ASCII text comes. Without
    ASCII forms the two are one.
    """

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.full = _Programs(rules, [rule.pattern for rule in rules])
        if any(rule.ascii_pattern for rule in rules):
            self.ascii = _Programs(rules, [rule.ascii_pattern or rule.pattern for rule in rules])
        else:
            self.ascii = self.full
        self.batchable = not any(
            rule.custom and re.search(r"\\[Az]|\(\?[a-zA-Z]*-[a-zA-Z]*m", rule.pattern) for rule in rules
        )

    def programs(self, text: str) -> _Programs:
        return self.ascii if text.isascii() else self.full  # (isascii is O(1) on a str)


def _starter(regex: Any) -> Callable[[bytes, int], int]:
    """``start(data, pos)``: where the next match begins, or -1; the binding's ``Match`` directly
    when it is there (see :func:`_searcher`)."""
    raw = getattr(regex, "_regexp", None)
    if raw is not None and hasattr(raw, "Match"):
        unanchored = re2._Anchor.UNANCHORED

        def start(data: bytes, pos: int) -> int:
            return raw.Match(unanchored, data, pos, len(data))[0][0] if pos <= len(data) else -1

        return start

    def public(data: bytes, pos: int) -> int:
        match = regex.search(data, pos)
        return -1 if match is None else match.start()

    return public


def _searcher(regex: Any) -> Callable[[bytes, int], list[tuple[int, int]] | None]:
    """``search(data, pos)``: the spans of every group of the next match, or None.

    Calls the binding's ``Match`` directly when it is there: the public
    ``search`` costs a generator and a match object per call, which on the
    slow path (lines that do match) more than doubles the time.
    ``test_redact.py`` checks that both give the same spans.
    """
    raw = getattr(regex, "_regexp", None)
    if raw is not None and hasattr(raw, "Match"):
        unanchored = re2._Anchor.UNANCHORED

        def search(data: bytes, pos: int) -> list[tuple[int, int]] | None:
            if pos > len(data):
                return None
            spans = raw.Match(unanchored, data, pos, len(data))
            return None if spans[0][0] < 0 else spans

        return search

    def public(data: bytes, pos: int) -> list[tuple[int, int]] | None:
        match = regex.search(data, pos)
        return None if match is None else [match.span(g) for g in range(regex.groups + 1)]

    return public


# ------------------------------------------------------------------- redactor


class Redactor:
    """Applies the configured rules; thread-safe. The only state, a stream's key block, is the caller's.

    It implements :class:`agent.plugin.Redactor`, the protocol its users (the collectors,
    :func:`redact_stream`) depend on; ``test_redact.py`` checks the two stay in step.
    """

    def __init__(
        self, rules: list[Rule], *, mode: str = "replace", key: bytes | None = None, telemetry: Any = None
    ) -> None:
        self._compiled = _Compiled(rules)
        self._mode = mode
        self._key = key if key is not None else _random.token_bytes(32)
        counter = getattr(telemetry, "log_lines_redacted", None)
        self._counters = {r.name: counter.labels(r.name) for r in rules} if counter is not None else {}
        self._marks = [(r.replace if r.replace is not None else f"[REDACTED:{r.name}]").encode() for r in rules]
        # key blocks come with the built-in private-key rule (the secrets set)
        self._block = next((i for i, r in enumerate(rules) if r.name == BLOCK_RULE and not r.custom), None)

    @classmethod
    def from_config(cls, section: Any, *, state_dir: Path, telemetry: Any = None) -> Redactor:
        """Build from a validated ``RedactionSection``; raises ``ValueError`` on rule errors."""
        errors: list[str] = []
        rules = _selected_rules(section, errors)
        if errors:
            raise ValueError("; ".join(errors))
        key = load_key(Path(state_dir)) if section.mode == "hash" else None
        return cls(rules, mode=section.mode, key=key, telemetry=telemetry)

    @property
    def rule_names(self) -> list[str]:
        return list(dict.fromkeys(rule.name for rule in self._compiled.rules))

    def redact(self, text: str) -> str:
        """One text; a key block inside it (several lines) is masked line by line."""
        if "\n" in text and self._block is not None and HINT in text:
            return self.redact_lines([text])[0]
        compiled = self._compiled
        programs = compiled.ascii if text.isascii() else compiled.full  # (compiled.programs(text), a call less)
        data = text.encode("utf-8", "surrogatepass")
        present = programs.set_match(data)
        if present is None:
            return text
        changed = self._redact_bytes(programs, data, present)
        return text if changed is None else _decode(changed)

    def redact_lines(self, lines: list[str], state: BlockState | None = None) -> list[str]:
        """Redact many texts at once: one RE2 search over the batch when nothing matches.

        ``state`` is the stream's key-block state, carried from one call to the
        next (a fresh one when None: a key block is then masked only within
        this batch). Texts left unchanged are returned as the same objects.
        """
        if not lines:
            return []
        joined = "\n".join(lines)
        data = joined.encode("utf-8", "surrogatepass")
        # (RE2 finds the hint in a batch many times faster than ``in`` does)
        if self._block is not None and ((state is not None and state.inside) or HINT_SEARCH.search(data)):
            masked = list(lines)
            changed = mask_blocks(masked, BlockState() if state is None else state, self._block_mask)
            if changed:
                self._count(BLOCK_RULE, len(changed))
                lines, joined = masked, "\n".join(masked)
                data = joined.encode("utf-8", "surrogatepass")
        return self._redact_joined(lines, joined, data)

    def streams(self) -> Streams:
        """A ``(lines, key) -> lines`` redactor that keeps one key-block state per stream key."""
        return Streams(self)

    def safe_cut(self, text: str, at: int) -> int:
        """An index >= ``at`` where ``text`` can be cut without splitting a secret found in it.

        ``hostwatch redact`` cuts an overlong line into pieces: a match that
        starts before ``at`` moves the cut to the end of its value, so no piece
        holds half a secret (or a key name whose value is in the next piece).
        """
        data = text.encode("utf-8", "surrogatepass")
        cut = len(text[:at].encode("utf-8", "surrogatepass"))
        programs = self._compiled.programs(text)
        present = programs.set_match(data)
        found: list[tuple[int, int]] = []
        if present:
            self._redact_bytes(programs, data, present, found)
        for start, vend in found:
            if start < cut < vend:  # matches do not overlap: moving the cut reaches no later one
                cut = vend
        return len(data[:cut].decode("utf-8", "surrogatepass"))

    def _block_mask(self, value: str) -> str:
        assert self._block is not None
        return _decode(self._replacement(self._block, value.encode("utf-8", "surrogatepass")))

    def _count(self, name: str, lines: int) -> None:
        counter = self._counters.get(name)
        if counter is not None:
            counter.inc(lines)

    def _redact_joined(self, lines: list[str], joined: str, data: bytes) -> list[str]:
        compiled = self._compiled
        if not compiled.batchable:
            return [self._redact_one(line) for line in lines]
        programs = compiled.programs(joined)
        at = programs.scan_from(data, 0)
        out = list(lines)
        if at < 0:
            return out
        count = len(lines)
        hits, counted, most = _stops(programs.scan_from, data, at)
        index = hits[-1][0]
        if most:  # (IP addresses in an access log): a Set match per record after them is cheaper than a
            # batch search plus one per record
            rest = data[hits[-1][2] + 1 :].split(b"\n")
            one_line_each = index + 1 + len(rest) == count
        else:
            rest = []
            one_line_each = index + data.count(b"\n", counted) == count - 1
        if not one_line_each:
            return self._redact_by_starts(programs, lines, joined, data, at, out)
        for i, start, end in hits:
            self._redact_at(programs, data[start:end], i, out)
        for i, record in enumerate(rest, index + 1):
            self._redact_at(programs, record, i, out)
        return out

    def _redact_joined_finding(
        self, lines: list[str], joined: str, data: bytes, find: str
    ) -> tuple[list[str], list[int] | None]:
        """:meth:`_redact_joined`, scanning for the rules and ``find`` in one pass; with the records
        where the scan stopped (every record ``find`` matches in, and those a rule may match in).

        Taken where few records stop the scan (an access log: the odd address), which is where the
        second pass a caller would make for ``find`` costs most for what it finds. Where many do
        (a level word on every line: see :func:`_stops`), or a record holds a newline, it gives up and
        redacts as :meth:`_redact_joined` does, with None for the records: the caller searches them.
        """
        compiled = self._compiled
        if not compiled.batchable:
            return self._redact_joined(lines, joined, data), None
        programs = compiled.programs(joined)
        scan = programs.scan_finding(find)
        if scan is None:
            return self._redact_joined(lines, joined, data), None
        at = scan(data, 0)
        hits, counted, most = _stops(scan, data, at) if at >= 0 else ([], 0, False)
        if most:
            return self._redact_joined(lines, joined, data), None
        if (hits[-1][0] if hits else 0) + data.count(b"\n", counted) != len(lines) - 1:
            return self._redact_joined(lines, joined, data), None  # a record holds a newline
        out = list(lines)
        for i, start, end in hits:
            self._redact_at(programs, data[start:end], i, out)
        return out, [hit[0] for hit in hits]

    def _redact_by_starts(
        self, programs: _Programs, lines: list[str], joined: str, data: bytes, at: int, out: list[str]
    ) -> list[str]:
        """:meth:`_redact_joined` when a record holds a newline: records found by their start offsets."""
        if joined.isascii():
            sizes: Iterable[int] = map(len, lines)
        else:
            sizes = [len(line.encode("utf-8", "surrogatepass")) for line in lines]
        starts = [0, *accumulate(size + 1 for size in sizes)]
        count, hits = len(lines), 0
        while at >= 0:
            i = bisect_right(starts, at) - 1
            if i >= count:
                break
            self._redact_at(programs, data[starts[i] : starts[i + 1] - 1], i, out)
            hits += 1
            if hits >= 16 and hits * 4 > i:
                for j in range(i + 1, count):
                    self._redact_at(programs, data[starts[j] : starts[j + 1] - 1], j, out)
                break
            if i + 1 >= count:
                break
            at = programs.scan_from(data, starts[i + 1])
        return out

    def _redact_one(self, text: str) -> str:
        # redact() without the key-block check; redact() repeats these lines rather than call this,
        # as one more call per line costs the per-line path a few percent
        compiled = self._compiled
        programs = compiled.ascii if text.isascii() else compiled.full  # (compiled.programs(text), a call less)
        data = text.encode("utf-8", "surrogatepass")
        present = programs.set_match(data)
        if present is None:
            return text
        changed = self._redact_bytes(programs, data, present)
        return text if changed is None else _decode(changed)

    def _redact_at(self, programs: _Programs, record: bytes, i: int, out: list[str]) -> None:
        present = programs.set_match(record)
        changed = self._redact_bytes(programs, record, present) if present else None
        if changed is not None:
            out[i] = _decode(changed)

    def _redact_bytes(
        self, programs: _Programs, data: bytes, present: list[int], found: list[tuple[int, int]] | None = None
    ) -> bytes | None:
        """The redacted text, or None when no candidate was confirmed.

        ``present`` (from the Set) names the rules that match somewhere; each
        keeps its next candidate in ``heads``, and the leftmost one (ties: rule
        order) is validated and taken, or skipped. With ``found``, the matches
        taken are listed there as (match start, value end), and not counted.
        """
        search, value_groups, rules = programs.search, programs.value_groups, programs.rules
        heads = []
        for index in present:
            spans = search[index](data, 0)
            if spans is not None:
                heads.append((spans[0][0], index, spans))
        pieces: list[bytes] = []
        hit: set[str] = set()
        cursor = barrier = 0  # copied up to; end of the last accepted match
        while heads:
            item = min(heads)
            heads.remove(item)
            start, index, spans = item
            end = spans[0][1]
            if start < barrier:  # inside an accepted match: look again after it
                pos = barrier
            elif start == end:
                pos = start + 1
            else:
                rule = rules[index]
                vstart, found_end = spans[0]
                for group in value_groups[index]:
                    if spans[group][0] >= 0:
                        vstart, found_end = spans[group]
                        break
                vend = found_end if rule.validate is None else rule.validate(data, start, vstart, found_end)
                pos = end  # a rejected candidate is skipped whole, which bounds the work per line
                if vend > vstart:
                    pieces += (data[cursor:vstart], self._replacement(index, data[vstart:vend]))
                    cursor = vend
                    pos = barrier = end if vend == found_end else vend  # a trimmed value frees the rest
                    hit.add(rule.name)
                    if found is not None:
                        found.append((start, vend))
            spans = search[index](data, pos)
            if spans is not None:
                heads.append((spans[0][0], index, spans))
        if not hit:
            return None
        pieces.append(data[cursor:])
        if found is None:
            for name in hit:
                counter = self._counters.get(name)
                if counter is not None:
                    counter.inc()
        return b"".join(pieces)

    def _replacement(self, index: int, value: bytes) -> bytes:
        rule = self._compiled.rules[index]
        if self._mode == "hash" and rule.replace is None:
            digest = hmac.new(self._key, value, hashlib.sha256).hexdigest()[:HASH_HEX]
            return f"[HASH:{rule.name}:{digest}]".encode()
        return self._marks[index]


class Streams:
    """Redaction for many interleaved streams (the files of a log collector), one key-block state each.

    Only streams inside a key block are remembered, at most :data:`MAX_STREAMS`
    (the oldest is forgotten first), so closed and rotated files cost nothing.
    """

    def __init__(self, redactor: plugin.Redactor) -> None:
        self._redactor = redactor
        self._inside: dict[str, BlockState] = {}

    def __call__(self, lines: list[str], key: str) -> list[str]:
        state = self._inside.pop(key, None)
        if state is None:
            state = BlockState()
        out = self._redactor.redact_lines(lines, state)
        if state.inside:
            self._inside[key] = state
            if len(self._inside) > MAX_STREAMS:
                forgotten = next(iter(self._inside))
                del self._inside[forgotten]
                log.warning("more than %d files inside private key blocks; forgetting %s's", MAX_STREAMS, forgotten)
        return out

    def many(self, groups: list[list[str]], keys: list[str]) -> list[str]:
        """The lines of several streams (``groups[i]`` of stream ``keys[i]``), redacted, in one flat list.

        One search over all of them when no stream is inside a key block and none begins one: the
        tailer's round at low rates holds a line or two of each of many files, and a call per file
        would cost more than the redaction itself. Otherwise stream by stream, as :meth:`__call__`."""
        engine = self._redactor  # this module's RE2 engine itself, not the protocol: its internals are ours
        if len(groups) > 1 and (joined := self._one_search(groups, keys)) is not None:
            return engine._redact_joined(*joined)
        return list(chain.from_iterable(map(self, groups, keys)))

    def many_finding(self, groups: list[list[str]], keys: list[str], find: str) -> tuple[list[str], list[int] | None]:
        """:meth:`many`, and the indices of the lines (in the flat list) where the RE2 pattern ``find``
        may match, found in the same pass over the text (see :meth:`Redactor._redact_joined_finding`):
        every line it matches in is there, and perhaps others. None when that pass was not taken."""
        if not any(groups):
            return [], []
        engine = self._redactor  # (as in many)
        if (joined := self._one_search(groups, keys)) is not None:
            return engine._redact_joined_finding(*joined, find)
        return self.many(groups, keys), None

    def _one_search(self, groups: list[list[str]], keys: list[str]) -> tuple[list[str], str, bytes] | None:
        """(the lines, joined, as bytes) when one search can take them all: no stream is inside a key
        block, and none begins one; else None (stream by stream)."""
        engine = self._redactor  # (as in many)
        if self._inside and not self._inside.keys().isdisjoint(keys):
            return None
        lines = list(chain.from_iterable(groups))
        joined = "\n".join(lines)
        data = joined.encode("utf-8", "surrogatepass")
        if engine._block is not None and HINT_SEARCH.search(data):
            return None
        return lines, joined, data


def _stops(scan: Callable[[bytes, int], int], data: bytes, at: int) -> tuple[list[tuple[int, int, int]], int, bool]:
    """The records of ``data`` (one a line) where ``scan`` stops, from its first stop ``at`` on, each taken
    whole: ``(record, its start, its end)`` in ``data`` each; the offset up to which newlines were
    counted; and whether it gave up early because most records stop it (16 stops or more, over a
    quarter of the records passed). A record's index is the number of newlines before it, counted up to
    each stop: the caller checks the total, as a record holding a newline (multiline) shifts the rest."""
    size = len(data)
    hits: list[tuple[int, int, int]] = []
    index = counted = 0
    while True:
        index += data.count(b"\n", counted, at)
        counted = at
        end = data.find(b"\n", at)
        if end < 0:
            end = size
        hits.append((index, data.rfind(b"\n", 0, at) + 1, end))
        if end >= size:
            return hits, counted, False
        if len(hits) >= 16 and len(hits) * 4 > index:
            return hits, counted, True
        # the match may belong to a later record or to none: resume at the next record
        at = scan(data, end + 1)
        if at < 0:
            return hits, counted, False


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # a cut through an invalid sequence; keep what can be kept
        return data.decode("utf-8", "replace")


# ------------------------------------------------------------------- hash key


def load_key(state_dir: Path) -> bytes:
    """The install's HMAC key in ``state_dir/redaction.key``, created once (0600, atomically).

    When the directory cannot be written, a per-process key is used and a
    warning logged: hashes then correlate only within this process.
    """
    path = state_dir / KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
        log.warning("redaction key %s has %d bytes, not 32; replacing it", path, len(key))
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot read redaction key %s (%s); hashes correlate only within this process", path, exc)
        return _random.token_bytes(32)
    key = _random.token_bytes(32)
    tmp = state_dir / f".{KEY_FILE}.{os.getpid()}.tmp"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.exists():  # a bad key: replace it
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # never overwrites a key another process just created
            except FileExistsError:
                key = path.read_bytes()
            os.unlink(tmp)
    except OSError as exc:
        log.warning("cannot write redaction key in %s (%s); hashes correlate only within this process", state_dir, exc)
        try:
            tmp.unlink()
        except OSError:
            pass
    return key


# ------------------------------------------------------ the agent's own secrets

# ------------------------------------------------------------ hostwatch redact

MAX_LINE = 1 << 20
OVERLAP = 64 << 10  # a secret longer than this may still be cut when an overlong line is


def redact_stream(
    redactor: plugin.Redactor, infile: BinaryIO, outfile: BinaryIO, *, chunk: int = 1 << 16, max_line: int = MAX_LINE
) -> None:
    """Copy ``infile`` to ``outfile`` redacted, line by line, in bounded memory.

    Reads whatever is available (so a live pipe flows) and redacts the
    complete lines of each read as one batch, with one key-block state for the
    whole input: the same lines give the same output as the agent's tailer.
    A line longer than ``max_line`` is written in pieces, each cut where no
    secret found in the last ``OVERLAP`` bytes before the cut would be split.
    """
    state = BlockState()
    tail = b""
    limit = max_line  # the tail's size that makes a cut: twice that once a match ran to its end
    while True:
        data = infile.read1(chunk) if hasattr(infile, "read1") else infile.read(chunk)
        if not data:
            break
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        if lines:
            limit = max_line
        texts = [line.decode("utf-8", "surrogateescape") for line in lines]
        _write(outfile, redactor.redact_lines(texts, state), end=b"\n")
        while len(tail) > limit:
            text = tail.decode("utf-8", "surrogateescape")
            at = max(1, len(text) - OVERLAP)
            cut = redactor.safe_cut(text, at) if limit == max_line else at
            if cut >= len(text):
                limit = 2 * max_line  # a match runs to the end of what is here: wait for more of the line
                break
            _write(outfile, redactor.redact_lines([text[:cut]], state), end=b"")
            tail = text[cut:].encode("utf-8", "surrogateescape")
            limit = max_line
    if tail:
        _write(outfile, redactor.redact_lines([tail.decode("utf-8", "surrogateescape")], state), end=b"")
    outfile.flush()


def _write(outfile: BinaryIO, texts: list[str], *, end: bytes) -> None:
    if texts:
        outfile.write("\n".join(texts).encode("utf-8", "surrogateescape") + end)
