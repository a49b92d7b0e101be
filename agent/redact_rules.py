"""The built-in redaction rules and their validators (see ``agent.redact``).

A rule is a name and an RE2 pattern whose first group that took part in the
match is the value to replace; a validator, when present, checks a candidate
(Luhn for card numbers, mod-97 for IBANs, ...) and may trim its span.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

# A validator sees the UTF-8 line, where the match starts, and the value's span;
# it returns the end of the span to redact (possibly trimmed) or -1 to reject it.
Validator = Callable[[bytes, int, int, int], int]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    pattern: str
    validate: Validator | None = None
    replace: str | None = None  # a custom rule's fixed replacement
    custom: bool = False
    # the same rule for ASCII text, when that is a much smaller RE2 program (no Unicode classes):
    # it must match exactly what ``pattern`` matches in any ASCII text
    ascii_pattern: str | None = None


# ----------------------------------------------------------------- validators

_PLACEHOLDERS = {b"", b"null", b"none", b"nil", b"true", b"false", b"undefined", b"-", b"''", b'""', b"{}", b"%s"}
# Words that report a state rather than hold a secret: "(using password: YES)", "token: expired",
# "authorization: denied", "signature=valid". A real secret equal to one of them leaks nothing.
_STATUS_WORDS = {
    b"yes", b"no", b"on", b"off", b"ok", b"set", b"unset", b"empty", b"missing", b"present", b"absent",
    b"valid", b"invalid", b"expired", b"revoked", b"denied", b"granted", b"required", b"optional",
    b"accepted", b"rejected", b"refused", b"failed", b"failure", b"success", b"verified", b"unverified",
    b"incorrect", b"correct", b"wrong", b"unknown", b"changed", b"updated", b"enabled", b"disabled",
    b"hidden", b"masked", b"redacted", b"provided", b"supplied", b"mismatch", b"ignored", b"n/a",
}  # fmt: skip


def _not_placeholder(line: bytes, mstart: int, start: int, end: int) -> int:
    value = line[start:end].strip().lower()
    if value in _PLACEHOLDERS or value.startswith((b"[redacted", b"[hash:", b"***", b"${", b"<redacted")):
        return -1
    if value.rstrip(b").,;:!") in _STATUS_WORDS:
        return -1
    return end


def _not_status(line: bytes, mstart: int, start: int, end: int) -> int:
    """A credential, unless its first word reports a state: "Authorization: denied for bob"."""
    first = line[start:end].split(None, 1)[0] if line[start:end].strip() else b""
    if first.lower().rstrip(b").,;:!") in _STATUS_WORDS:
        return -1
    return _not_placeholder(line, mstart, start, end)


def _token_value(line: bytes, mstart: int, start: int, end: int) -> int:
    if line[start:end].isdigit() and end - start < 6:  # counters like max_token=100; OTP codes have 6+
        return -1
    return _not_placeholder(line, mstart, start, end)


def _password_value(line: bytes, mstart: int, start: int, end: int) -> int:
    if line[mstart - 1 : mstart] == b"(" and line[start - 1 : start] == b":":
        return -1  # PAM's "pam_unix(passwd:chauthtok)": a service and a module type
    return _not_placeholder(line, mstart, start, end)


# words that end in PASS without being about a password (BYPASS=1, COMPASS=north)
_PASS_WORDS = (b"BYPASS", b"COMPASS", b"SURPASS", b"TRESPASS", b"OVERPASS", b"UNDERPASS")
_KEY = re.compile(rb"[A-Za-z0-9_.\-]+")


def _not_path(line: bytes, mstart: int, start: int, end: int) -> int:
    # sudo logs PWD=/home/x (and OLDPWD=): the working directory, not a password
    if line[start : start + 1] in (b"/", b"~"):
        return -1
    key = _KEY.match(line, mstart, start)
    if key is not None and key.group().upper().endswith(_PASS_WORDS):
        return -1
    return _not_placeholder(line, mstart, start, end)


def _flag_value(line: bytes, mstart: int, start: int, end: int) -> int:
    # --no-password is a switch: what follows it is the next argument, not a password
    if b"-no-" in line[mstart:start].lower():
        return -1
    return _not_placeholder(line, mstart, start, end)


def _bearer_token(line: bytes, mstart: int, start: int, end: int) -> int:
    value = line[start:end]
    return end if any(48 <= c <= 57 for c in value) or len(value) >= 20 else -1


def _basic_credentials(line: bytes, mstart: int, start: int, end: int) -> int:
    try:
        decoded = base64.b64decode(line[start:end] + b"==", validate=False)
    except (binascii.Error, ValueError):
        return -1
    return end if b":" in decoded and decoded.isascii() else -1


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_brand(digits: str) -> bool:
    """Issuer prefix and length of a payment card; filters out timestamps and ids."""
    n, two, four = len(digits), int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19
    if 3528 <= four <= 3589:
        return 16 <= n <= 19
    return (digits[0] == "6" or two in (50, 56, 57, 58)) and 12 <= n <= 19


def _card_grouping(groups: list[str]) -> bool:
    sizes = [len(g) for g in groups]
    if len(sizes) == 1:
        return True
    return sizes in ([4, 6, 5], [4, 6, 4]) or (
        sizes[0] == 4 and all(s == 4 for s in sizes[1:-1]) and 1 <= sizes[-1] <= 4
    )


_CARD_KEY = re.compile(rb"(?i:card|cc|pan|acct|account|num)[A-Za-z0-9_.\-]*=$")


def _card_number(line: bytes, mstart: int, start: int, end: int) -> int:
    value = line[start:end].decode()
    if line[start - 1 : start] == b"=" and not _CARD_KEY.search(line[max(0, start - 40) : start]):
        return -1  # ord=6795061899455057: a query's random number, unless the key says card
    seps = set(re.findall(r"[ .-]", value))
    if len(seps) > 1:
        return -1
    groups = value.split(seps.pop()) if seps else [value]
    # a trailing group (CVV, amount) may have run into the candidate: try shorter prefixes
    for k in range(len(groups), 0, -1):
        digits = "".join(groups[:k])
        if 13 <= len(digits) <= 19 and _card_grouping(groups[:k]) and _card_brand(digits) and _luhn(digits):
            return start + sum(map(len, groups[:k])) + k - 1
    return -1


# ISO 13616 registry: country -> IBAN length
_IBAN_TABLE = (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27 DK18 DO28 "
    "EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 "
    "JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 MN20 MR27 MT31 MU30 NI28 NL18 "
    "NO15 OM23 PK24 PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 SC31 SD18 SE24 SI19 SK24 SM27 SO23 ST25 SV28 "
    "TL23 TN24 TR26 UA29 VA22 VG24 XK20"
)
_IBAN_LENGTHS = {entry[:2]: int(entry[2:]) for entry in _IBAN_TABLE.split()}


def _iban(line: bytes, mstart: int, start: int, end: int) -> int:
    value = line[start:end].decode()
    length = _IBAN_LENGTHS.get(value[:2])
    if length is None:
        return -1
    seen = 0
    for i, ch in enumerate(value):  # cut after the country's length, at a group boundary
        seen += ch != " "
        if seen == length:
            if i + 1 < len(value) and value[i + 1] != " ":
                return -1
            compact = value[: i + 1].replace(" ", "")
            number = int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4]))
            return start + i + 1 if number % 97 == 1 else -1
    return -1


def _ssn(line: bytes, mstart: int, start: int, end: int) -> int:
    if line[start - 1 : start] == b"-" or line[end : end + 1] == b"-":
        return -1
    area, group, serial = line[start:end].split(b"-")
    if area in (b"000", b"666") or area[:1] == b"9" or group == b"00" or serial == b"0000":
        return -1
    return end


_FILE_SUFFIXES = {
    b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"ico", b"bmp", b"css", b"js", b"html", b"htm",
    b"php", b"json", b"xml", b"txt", b"log", b"zip", b"gz", b"pdf", b"mp4", b"woff", b"woff2", b"ttf",
}  # fmt: skip
_NOT_MAIL_DOMAINS = (b"@openssh.com", b"@libssh.org", b"@lysator.liu.se")  # SSH algorithm names


def _email(line: bytes, mstart: int, start: int, end: int) -> int:
    value = line[start:end].lower()
    if value.rsplit(b".", 1)[-1] in _FILE_SUFFIXES or value.endswith(_NOT_MAIL_DOMAINS):
        return -1  # icon@2x.png, aes128-ctr@openssh.com
    return end


def _word_char(c: bytes) -> bool:
    return c.isalnum() or c in (b"_", b":", b".")


def _ipv4(line: bytes, mstart: int, start: int, end: int) -> int:
    # 1.2.3.4.5, Firefox/3.6.3.1 and rv:1.9.2.3 are versions, not addresses
    before = line[max(0, start - 3) : start]
    if before.endswith((b".", b"/")) or before == b"rv:":
        return -1
    if line[end : end + 1] == b"." and line[end + 1 : end + 2].isdigit():
        return -1
    return end


def _ipv6(line: bytes, mstart: int, start: int, end: int) -> int:
    if (start and _word_char(line[start - 1 : start])) or _word_char(line[end : end + 1]):
        return -1  # Foo::bar, std::map
    try:
        ipaddress.IPv6Address(line[start:end].split(b"%")[0].decode())
    except ValueError:
        return -1
    return end


# ------------------------------------------------------------- built-in rules

_EQ = r"(?:=>|[:=]|%(?:25)*3[Dd])"  # = : => and = URL-encoded once or more (%3D, %253D)
_SEP = r"""(?:\\?["'])?\s*""" + _EQ + r"\s*"  # after the key's closing quote, if any
_VALUE = (
    r'(?:\\"((?:[^"\\]|\\\\\\"|\\\\|\\[^"\\])*)\\"'  # \"...\" inside a JSON string
    r'|"((?:[^"\\]|\\.)*)"'
    r"|'((?:[^'\\]|\\.)*)'"
    r"""|([^\s"'&,;<>\\\]}]+))"""
)
_TOKEN68 = r"([A-Za-z0-9\-._~+/]+=*)"
_AUTH = r"""(?i:(?:proxy-)?authorization)(?:\\?["'])?\s*[:=]\s*(?:\\?["'])?"""
_HEX = r"[0-9A-Fa-f]{1,4}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# PEM, OpenSSH, PKCS#8, PGP (PRIVATE/SECRET KEY BLOCK) and OpenVPN static keys, and SSH2's
# "---- BEGIN ... ----"; agent.redact_blocks masks the lines between such a line and its END
KEY_LABELS = r"(?:[A-Z0-9.]+ )*(?:PRIVATE|SECRET) KEY(?: BLOCK)?|OpenVPN Static key V1"
SSH2_LABEL = "SSH2 ENCRYPTED PRIVATE KEY"
KEY_BEGIN = rf"-----BEGIN (?:{KEY_LABELS})-----|---- BEGIN {SSH2_LABEL} ----"
_PASSWORD_KEY = (
    # db_password, DB_PASSWORD, userPassword, userpassword, PGPASSWORD; passwd alone or after a
    # separator only, so commands such as chpasswd or htpasswd are not taken for keys
    r"\b(?:[A-Za-z0-9]+[_.\-])*(?:[A-Za-z0-9]*(?i:password|passphrase)|[A-Z0-9]*PASSWD|(?i:passwd|passcode))"
    r"(?:[_.\-]?(?i:confirm(?:ation)?|hash|[0-9]))?"
)
_FLAG_VALUE = r"""(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([^\s"'\-][^\s"']*))"""

SECRETS = (
    Rule(
        "private-key",  # the body on the BEGIN line itself (a one-line or JSON-escaped key)
        r"(?:" + KEY_BEGIN + r")((?:[A-Za-z0-9+/=:,. \t\r\\]|-[A-Za-z0-9])+)",
        _not_placeholder,
    ),
    Rule(
        "aws-secret-access-key",
        r"(?i:aws_?secret_?(?:access_?)?key|secret_?access_?key)" + _SEP + r"""(?:\\?["'])?([A-Za-z0-9/+]{40})\b""",
    ),
    Rule("aws-access-key-id", r"\b((?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16})\b"),
    Rule("gcp-api-key", r"\b(AIza[0-9A-Za-z_\-]{35})"),
    Rule("github-token", r"\b(gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
    Rule("gitlab-token", r"\b(gl(?:pat|dt|rt|ptt|cbt|oas|ft|imt|agent|soat)-[A-Za-z0-9_\-]{20,})"),
    Rule("slack-token", r"\b(xox[abposr]-[0-9A-Za-z\-]{10,}|xapp-[0-9]-[0-9A-Za-z\-]{10,})"),
    Rule("slack-token", r"hooks\.slack\.com/services/(T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+)"),
    Rule("stripe-key", r"\b((?:sk|rk)_(?:live|test)_[0-9A-Za-z]{10,}|whsec_[0-9A-Za-z]{20,})"),
    Rule("npm-token", r"\b(npm_[A-Za-z0-9]{36})\b"),
    Rule("sendgrid-key", r"\b(SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})"),
    Rule("telegram-bot-token", r"(?:\bbot|\b)([0-9]{5,16}:A[A-Za-z0-9_\-]{32,34})(?:[^A-Za-z0-9_\-]|$)"),
    Rule(
        "openai-key",  # sk-proj-, sk-svcacct-, sk-admin-, legacy sk-...T3BlbkFJ..., and sk-ant- alike
        r"\b(sk-(?:(?:proj|svcacct|admin|ant-[a-z0-9]+)-)?[A-Za-z0-9_\-]{32,})",
    ),
    Rule("jwt", r"\b(eyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*)"),
    Rule("url-password", r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@\"'<>]*:([^\s/@\"'<>]+)@"),
    Rule(  # the same, URL-encoded once or more inside a query: https%3A%2F%2Fuser%3Apw%40host
        "url-password",
        r"(?i:[a-z][a-z0-9+.\-]*%(?:25)*3a%(?:25)*2f%(?:25)*2f[a-z0-9._~\-]*%(?:25)*3a)"
        r"((?:[A-Za-z0-9._~!$*+\-]|%(?:25)*(?:[013-9A-Fa-f][0-9A-Fa-f]|2[0-9A-Fa-f]))+?)%(?:25)*40",
    ),
    Rule("bearer", _AUTH + r"(?i:bearer|token)\s+" + _TOKEN68),
    Rule("basic-auth", _AUTH + r"(?i:basic)\s+([A-Za-z0-9+/]+=*)"),
    Rule(
        "authorization",  # other schemes, e.g. Digest username="x", response="..."
        _AUTH + r"""((?:[A-Za-z0-9\-]+\s+)?(?:[^\s"',\\]|"[^"]*")+(?:,\s*(?:[^\s"',\\]|"[^"]*")+)*)""",
        _not_status,
    ),
    Rule("bearer", r"\b(?i:bearer)\s+" + _TOKEN68, _bearer_token),
    Rule("basic-auth", r"\b(?i:basic)\s+([A-Za-z0-9+/]{6,}=*)", _basic_credentials),
    Rule(
        "cookie",  # every value of a Cookie or Set-Cookie header: session cookies are credentials
        r"""\b(?i:cookie)(?:\\?["'])?\s*[:=]\s*(?:\\?["'])?"""
        r"""((?:[^\s;=,"'\\]+=[^\s;"'\\]*)(?:;[ \t]*[^\s;=,"'\\]+=[^\s;"'\\]*)*)""",
        _not_placeholder,
    ),
    Rule(
        "password",  # a config line "password = a phrase" or "password: a phrase": the value runs to the end
        # ("KEY=value command" is a shell line: there the value ends at the space, by the next rule)
        r"(?m:^)[ \t]*(?:-[ \t]+)?" + _PASSWORD_KEY + r"(?::|[ \t]+=)[ \t]+([^\s\"'][^\r\n]*[^\s])[ \t\r]*(?m:$)",
        _password_value,
    ),
    Rule("password", _PASSWORD_KEY + _SEP + _VALUE, _password_value),
    Rule(
        "password",
        r"\b(?:(?i:(?:[a-z0-9]+[_.\-])*(?:pwd|pass))|[A-Z0-9]+(?:PASS|PWD))" + _SEP + _VALUE,
        _not_path,
    ),
    Rule("password", r"<(?i:[a-z0-9_.:\-]*(?:password|passwd|passphrase))>([^<]+)<", _not_placeholder),
    Rule(  # command-line options: --password X, --db-pass X, -storepass X (with = it is the rule above)
        "password",
        r"""(?:^|[\s"'])--?(?:[A-Za-z0-9]+-)*(?i:"""
        r"(?:store|key|src|dest|new|old|db|admin|root|user)?"
        r"(?:password|passwd|passphrase|pass|pwd))[ \t]+" + _FLAG_VALUE,
        _flag_value,
    ),
    Rule(  # mysql -uroot -pSECRET (only after a MySQL client's name: -p means other things elsewhere)
        "password",
        r"\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mysqlshow|mysqlslap|mysqlpump|mariadb(?:-[a-z]+)?)"
        r"\b[^\r\n]*?[ \t]-p" + r"""(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([^\s"'][^\s]*))""",
        _not_placeholder,
    ),
    Rule("password", r"\bsshpass[ \t]+(?:-[A-Za-z][ \t]+)*-p[ \t]*" + _FLAG_VALUE, _not_placeholder),
    Rule(
        "token",
        r"(?i:[a-z0-9_.\-]*(?:token|secret|api[_.\-]?key|apikey|access[_.\-]?key|private[_.\-]?key|auth[_.\-]?key"
        r"|account[_.\-]?key|credentials?|session[_.\-]?id|sessid|[_.]session|connect\.sid|signature))" + _SEP + _VALUE,
        _token_value,
    ),
    Rule("token", r"\b(?i:(?:[a-z0-9]+[_.\-])*sig)" + _SEP + _VALUE, _token_value),
    Rule("token", r"<(?i:[a-z0-9_.:\-]*(?:token|secret|api[_.\-]?key|apikey))>([^<]+)<", _token_value),
)


def _email_pattern(letter: str, digit: str) -> str:
    """The e-mail rule over an alphabet: ``letter`` and ``digit`` are what a character class holds for them."""
    name, domain = rf"[{letter}{digit}._%+\-]+", rf"[{letter}{digit}\-]+"
    return rf"({name}(?:@|%(?:25)*40){domain}(?:\.{domain})*\.[{letter}]{{2,24}})"


# Among ASCII characters \p{L} and \p{N} match exactly A-Z, a-z and 0-9, so in ASCII text the second
# form finds the same spans as the first. The first is most of the default rules' RE2 programs and of
# their first searches (the {2,24} repeat copies \p{L}'s large UTF-8 automaton 24 times); ASCII text
# never needs it built (see agent.redact._Programs).
EMAIL = _email_pattern(r"\p{L}", r"\p{N}")
EMAIL_ASCII = _email_pattern("A-Za-z", "0-9")

PII = (
    Rule("email", EMAIL, _email, ascii_pattern=EMAIL_ASCII),  # internationalised too: jürgen@beispiel.de
    Rule("credit-card", r"\b((?:[0-9][ \-]?){12,18}[0-9])\b", _card_number),
    # written with dots: only in the issuers' groupings (4-4-4-4..., Amex 4-6-5), so decimals stay out
    Rule("credit-card", r"\b([0-9]{4}(?:\.[0-9]{4}){2}\.[0-9]{1,7}|[0-9]{4}\.[0-9]{6}\.[0-9]{4,5})\b", _card_number),
    Rule("iban", r"\b([A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)\b", _iban),
    Rule("us-ssn", r"\b([0-9]{3}-[0-9]{2}-[0-9]{4})\b", _ssn),
)

NETWORK = (
    Rule("ipv4", rf"\b({_OCTET}(?:\.{_OCTET}){{3}})\b", _ipv4),
    Rule(
        "ipv6",
        rf"((?:{_HEX}(?::{_HEX}){{7}}|(?:{_HEX}(?::{_HEX}){{0,6}})?::(?:{_HEX}(?::{_HEX}){{0,6}})?)"
        r"(?:\.[0-9]{1,3}){0,3}(?:%[0-9A-Za-z_.\-]+)?)",
        _ipv6,
    ),
)

BUILTIN_SETS: dict[str, tuple[Rule, ...]] = {"secrets": SECRETS, "pii": PII, "network": NETWORK}
