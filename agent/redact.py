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
then by rule order (custom rules first).

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
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from pathlib import Path
from typing import Any, BinaryIO

import re2

from agent.redact_rules import BUILTIN_SETS, Rule

log = logging.getLogger("hostwatch.redact")

KEY_FILE = "redaction.key"
MAX_MEM = 64 << 20  # RE2's budget per compiled program; the default 8 MiB is tight for the union
HASH_HEX = 12

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
    if not errors:
        try:
            _Compiled(rules)
        except re2.error as exc:
            errors.append(f"redaction: the rules together exceed RE2's limits: {_re2_message(exc)}")
    return errors


class _Compiled:
    """The rules' RE2 programs: each rule alone, their union as a Set, and a batch scanner."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.regexes = [re2.compile(rule.pattern, _options()) for rule in rules]
        self.value_groups: list[tuple[int, ...]] = []
        for rule, regex in zip(rules, self.regexes, strict=True):
            if rule.custom:
                index = regex.groupindex.get("value")
                self.value_groups.append((index,) if index else ())
            else:
                self.value_groups.append(tuple(range(1, regex.groups + 1)))
        self.search = [_searcher(regex) for regex in self.regexes]
        self.set = re2.Set.SearchSet(_options(capture=False))
        for rule in rules:
            self.set.Add(rule.pattern)
        self.set.Compile()
        union = "|".join(f"(?:{rule.pattern})" for rule in rules) or r"[^\x00-\x{10FFFF}]"
        # (?m): in a batch a record starts after "\n", so ^ and $ must match at line ends
        # there; the batch scan only has to find every record that may match.
        self.scan = re2.compile("(?m)" + union, _options(capture=False))
        self.batchable = not any(
            rule.custom and re.search(r"\\[Az]|\(\?[a-zA-Z]*-[a-zA-Z]*m", rule.pattern) for rule in rules
        )


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
    """Applies the configured rules; thread-safe and stateless per call."""

    def __init__(
        self, rules: list[Rule], *, mode: str = "replace", key: bytes | None = None, telemetry: Any = None
    ) -> None:
        self._compiled = _Compiled(rules)
        self._mode = mode
        self._key = key if key is not None else _random.token_bytes(32)
        counter = getattr(telemetry, "log_lines_redacted", None)
        self._counters = {r.name: counter.labels(r.name) for r in rules} if counter is not None else {}
        self._marks = [(r.replace if r.replace is not None else f"[REDACTED:{r.name}]").encode() for r in rules]

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
        data = text.encode("utf-8", "surrogatepass")
        present = self._compiled.set.Match(data)
        if present is None:
            return text
        changed = self._redact_bytes(data, present)
        return text if changed is None else _decode(changed)

    def redact_lines(self, lines: list[str]) -> list[str]:
        """Redact many texts at once: one RE2 search over the batch when nothing matches."""
        compiled = self._compiled
        if not lines or not compiled.batchable:
            return [self.redact(line) for line in lines]
        joined = "\n".join(lines)
        data = joined.encode("utf-8", "surrogatepass")
        match = compiled.scan.search(data)
        out = list(lines)
        if match is None:
            return out
        if joined.isascii():
            sizes: Iterable[int] = map(len, lines)
        else:
            sizes = [len(line.encode("utf-8", "surrogatepass")) for line in lines]
        starts = [0, *accumulate(size + 1 for size in sizes)]
        count, hits = len(lines), 0
        while match is not None:
            i = bisect_right(starts, match.start()) - 1
            if i >= count:
                break
            self._redact_record(data, starts, i, out)
            hits += 1
            if hits >= 16 and hits * 4 > i:
                # most records match (IP addresses in an access log): a Set match per
                # record is cheaper than a batch search plus one per record
                for j in range(i + 1, count):
                    self._redact_record(data, starts, j, out)
                break
            if i + 1 >= count:
                break
            # the match may belong to a later record or to none: resume at the next record
            match = compiled.scan.search(data, starts[i + 1])
        return out

    def _redact_record(self, data: bytes, starts: list[int], i: int, out: list[str]) -> None:
        record = data[starts[i] : starts[i + 1] - 1]
        present = self._compiled.set.Match(record)
        changed = self._redact_bytes(record, present) if present else None
        if changed is not None:
            out[i] = _decode(changed)

    def _redact_bytes(self, data: bytes, present: list[int]) -> bytes | None:
        """The redacted text, or None when no candidate was confirmed.

        ``present`` (from the Set) names the rules that match somewhere; each
        keeps its next candidate in ``heads``, and the leftmost one (ties: rule
        order) is validated and taken, or skipped.
        """
        compiled = self._compiled
        heads = []
        for index in present:
            spans = compiled.search[index](data, 0)
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
                rule = compiled.rules[index]
                vstart, found_end = spans[0]
                for group in compiled.value_groups[index]:
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
            spans = compiled.search[index](data, pos)
            if spans is not None:
                heads.append((spans[0][0], index, spans))
        if not hit:
            return None
        pieces.append(data[cursor:])
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

_PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END[A-Z0-9 ]*PRIVATE KEY-----")
PEM_MAX_LINES = 200
MAX_LINE = 1 << 20


def redact_stream(redactor: Redactor, infile: BinaryIO, outfile: BinaryIO, *, chunk: int = 1 << 16) -> None:
    """Copy ``infile`` to ``outfile`` redacted, line by line, in bounded memory.

    Reads whatever is available (so a live pipe flows), redacts the complete
    lines of each read as one batch, and keeps a private-key block that spans
    lines together (up to 200 lines) so the whole block is recognised. A line
    longer than 1 MiB is redacted in 1 MiB pieces.
    """
    tail = b""
    block: list[str] = []
    while True:
        data = infile.read1(chunk) if hasattr(infile, "read1") else infile.read(chunk)
        if not data:
            break
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        texts = list(_records((line.decode("utf-8", "surrogateescape") for line in lines), block))
        _write(outfile, redactor.redact_lines(texts), end=b"\n")
        if len(tail) > MAX_LINE:
            _write(outfile, redactor.redact_lines([tail.decode("utf-8", "surrogateescape")]), end=b"")
            tail = b""
    if block:
        _write(outfile, redactor.redact_lines(["\n".join(block)]), end=b"\n")
    if tail:
        _write(outfile, redactor.redact_lines([tail.decode("utf-8", "surrogateescape")]), end=b"")
    outfile.flush()


def _records(lines: Iterable[str], block: list[str]) -> Iterator[str]:
    for line in lines:
        if block:
            block.append(line)
            if ("PRIVATE KEY-----" in line and _PEM_END.search(line)) or len(block) >= PEM_MAX_LINES:
                yield "\n".join(block)
                block.clear()
        elif "PRIVATE KEY-----" in line and _PEM_BEGIN.search(line) and not _PEM_END.search(line):
            block.append(line)
        else:
            yield line


def _write(outfile: BinaryIO, texts: list[str], *, end: bytes) -> None:
    if texts:
        outfile.write("\n".join(texts).encode("utf-8", "surrogateescape") + end)
