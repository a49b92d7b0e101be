"""Redaction rules, hard shapes, custom rules, hash mode, config errors, and the batch path."""

from __future__ import annotations

import io
import logging
import random
import stat
import time
from pathlib import Path

import msgspec
import pytest
import re2

from agent.config import ConfigError, RedactionRule, RedactionSection, loads_config
from agent.redact import Redactor, _searcher, check_rules, load_key, redact_stream
from agent.redact_rules import BUILTIN_SETS, Rule
from agent.secrets import config_secrets
from agent.telemetry import Telemetry

ALL = [rule for rules in BUILTIN_SETS.values() for rule in rules]
DEFAULT = RedactionSection()


@pytest.fixture(scope="module")
def everything() -> Redactor:
    return Redactor(ALL)


def mark(rule: str) -> str:
    return f"[REDACTED:{rule}]"


# (rule, text, the secret: the only part that must change)
POSITIVE = [
    # secrets: provider keys and tokens
    ("aws-access-key-id", "key id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
    ("aws-access-key-id", '"AccessKeyId":"ASIAY34FZKBOKMUTVV7A"', "ASIAY34FZKBOKMUTVV7A"),
    (
        "aws-secret-access-key",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    (
        "aws-secret-access-key",
        '{"SecretAccessKey": "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"}',
        "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
    ),
    ("gcp-api-key", "GET /maps?key=AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe"),
    ("github-token", "push with ghp_16C7e42F292c6912E7710c838347Ae178B4a!", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    (
        "github-token",
        "GITHUB=github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRS done",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRS",
    ),
    ("gitlab-token", "clone using glpat-xYz0123456789abcdEFGH.", "glpat-xYz0123456789abcdEFGH"),
    ("slack-token", "bot xoxb-2401234567-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx ok", None),
    ("slack-token", "POST https://hooks.slack.com/services/T0AB12CD3/B0CD45EF6/aBcDeFgHiJkLmNoPqRsTuVwX", None),
    ("stripe-key", "charge failed for sk_live_51H8abcDEFghiJKLmnoPQRstu", "sk_live_51H8abcDEFghiJKLmnoPQRstu"),
    (
        "jwt",
        "session eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U ok",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
    # secrets: headers and key=value forms keep the key
    ("bearer", "Authorization: Bearer mF_9.B5f-4.1JqM", "mF_9.B5f-4.1JqM"),
    ("bearer", '"authorization":"bearer abc.def123-ghi"', "abc.def123-ghi"),
    ("bearer", "curl -H 'Authorization: token ghp_16C7e42F292c6912E7710c838347Ae178B4a'", None),
    ("bearer", 'headers={"X": "Bearer 8f14e45fceea167a5a36dedd4bea2543"}', "8f14e45fceea167a5a36dedd4bea2543"),
    ("basic-auth", "Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ("basic-auth", "proxy said basic YWxpY2U6czNjcjN0", "YWxpY2U6czNjcjN0"),
    ("authorization", 'Authorization: Digest username="bob", response="6629fae49393a05397450978507c4ef1"', None),
    ("password", "login password=hunter2 ok", "hunter2"),
    ("password", "DB_PASSWORD=hunter2", "hunter2"),
    ("password", "db.password = 'hunter2';", "hunter2"),
    ("password", "userPassword: hunter2", "hunter2"),
    ("password", "{User:bob Password:hunter2}", "hunter2"),
    ("password", "'password' => 'hunter2',", "hunter2"),
    ("password", "cmd --password=hunter2 --verbose", "hunter2"),
    ("password", "Driver={SQL};Server=db;Uid=sa;Pwd=Hunt3r2;", "Hunt3r2"),
    ("password", "<password>hunter2</password>", None),
    ("token", "X-Api-Key: 0123456789abcdef", "0123456789abcdef"),
    ("token", '{"client_secret":"s3cr3t-value","id":7}', "s3cr3t-value"),
    ("token", "GET /cb?state=x&access_token=ya29.a0AfH6SMB&scope=email", "ya29.a0AfH6SMB"),
    ("token", "csrftoken=Zx81mKq0pLs; path=/", "Zx81mKq0pLs"),
    ("token", "GET /file?X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024 HTTP", None),
    ("url-password", "connect postgres://admin:s3cret@db.internal:5432/app", "s3cret"),
    ("url-password", "redis://:hunter2@cache.internal:6379/0", "hunter2"),
    # issue 10: shapes that used to get through
    ("password", "PGPASSWORD=hunter2 psql -h db -U app", "hunter2"),
    ("password", "export DBPASS=hunter2", "hunter2"),
    ("password", "MYSQL_PWD=hunter2 mysqldump app", "hunter2"),
    ("password", "ldap: userpassword=hunter2 changed", "hunter2"),
    ("password", "env DbPassword=hunter2", "hunter2"),
    ("password", "mysqldump --password hunter2 app", "hunter2"),
    ("password", "run: pg_restore --db-password 'correct horse' -d app", "correct horse"),
    ("password", "keytool -list -storepass changeit1 -keystore x.jks", "changeit1"),
    ("password", "exec: mysql -uroot -phunter2 app", "hunter2"),
    ("password", "mariadb-dump -u backup -p'my secret' --all-databases", "my secret"),
    ("password", "sshpass -p hunter2 ssh deploy@host", "hunter2"),
    ("password", 'login failed: password="correct horse battery" for bob', "correct horse battery"),
    ("password", "password: 'two words'", "two words"),
    ("password", "  db_password = correct horse battery staple  ", "correct horse battery staple"),
    ("password", "GET /x?next=%2Flogin%3Fpassword%253Dhunter2 HTTP/1.1", "hunter2"),
    ("token", "AccountName=acct;AccountKey=Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFy==;EndpointSuffix=x", None),
    ("token", "sent laravel_session=eyJpdiI6IkZ3 to the client", "eyJpdiI6IkZ3"),
    ("token", "express connect.sid=s%3AvX2Gk9 set", "s%3AvX2Gk9"),
    ("cookie", "Cookie: session=abcdef123456; theme=dark", "session=abcdef123456; theme=dark"),
    ("cookie", "Set-Cookie: sid=s%3Aabc.def; Path=/; HttpOnly", "sid=s%3Aabc.def; Path=/"),
    ("cookie", '"cookie":"_ga=GA1.2.3; connect.sid=s%3Axyz"', "_ga=GA1.2.3; connect.sid=s%3Axyz"),
    ("url-password", "GET /go?to=https%3A%2F%2Fbob%3Ahunter2%40db.example%2F HTTP/1.1", "hunter2"),
    ("url-password", "GET /go?to=https%253A%252F%252Fbob%253Ahunter2%2540db.example HTTP/1.1", "hunter2"),
    ("npm-token", "//registry/:_authToken npm_abcdefghijklmnopqrstuvwxyz0123456789 x", None),
    (
        "sendgrid-key",
        "SENDGRID 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 ok",
        "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",
    ),
    (
        "telegram-bot-token",
        "POST https://api.telegram.org/bot7104567891:AAF8Xk2mQpR7vT3yZbN4cW9dL1sH6jE0uGa/sendMessage",
        "7104567891:AAF8Xk2mQpR7vT3yZbN4cW9dL1sH6jE0uGa",
    ),
    ("telegram-bot-token", "bot token 110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", None),
    ("openai-key", "OPENAI sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh3iJk", None),
    ("openai-key", "key=sk-Ab3dEf6hIj9kLm2nOp5qT3BlbkFJs8tUv1wXy4zAb7cDe0f", None),
    ("private-key", "-----BEGIN PGP PRIVATE KEY BLOCK-----lQOYBGZ3abcdefghijk", "lQOYBGZ3abcdefghijk"),
    ("email", "GET /u?mail=jane%2540example.org HTTP/1.1", "jane%2540example.org"),
    ("credit-card", "card 4111.1111.1111.1111 ok", "4111.1111.1111.1111"),
    # pii
    ("email", "mail to john.doe+tag@example.co.uk failed", "john.doe+tag@example.co.uk"),
    ("email", "GET /subscribe?email=jane%40example.org HTTP/1.1", "jane%40example.org"),
    ("credit-card", "paid with 4111111111111111 today", "4111111111111111"),
    ("credit-card", "card 5500 0000 0000 0004, thanks", "5500 0000 0000 0004"),
    ("credit-card", "card 4012-8888-8888-1881 exp 12/27", "4012-8888-8888-1881"),
    ("credit-card", "amex 3782 822463 10005 ok", "3782 822463 10005"),
    ("credit-card", "card 4111 1111 1111 1111 123 (cvv after the number)", "4111 1111 1111 1111"),
    ("credit-card", "POST /pay?cc_number=4111111111111111&x=1", "4111111111111111"),
    ("iban", "IBAN DE89 3704 0044 0532 0130 00 ok", "DE89 3704 0044 0532 0130 00"),
    ("iban", "iban=GB82WEST12345698765432;", "GB82WEST12345698765432"),
    ("iban", "to BE68 5390 0754 7034 EURO 100", "BE68 5390 0754 7034"),
    ("us-ssn", "ssn 078-05-1120.", "078-05-1120"),
    # network
    ("ipv4", "connect from 192.168.1.10:5432 refused", "192.168.1.10"),
    ("ipv6", "peer [2001:db8::ff00:42:8329]:443 reset", "2001:db8::ff00:42:8329"),
    ("ipv6", "listening on fe80::1%eth0 now", "fe80::1%eth0"),
    ("ipv6", "from ::ffff:192.0.2.128 port 22", "::ffff:192.0.2.128"),
]


@pytest.mark.parametrize(("rule", "text", "secret"), POSITIVE, ids=[f"{c[0]}-{i}" for i, c in enumerate(POSITIVE)])
def test_rule_redacts_the_value_and_keeps_the_context(everything: Redactor, rule: str, text: str, secret: str | None):
    out = everything.redact(text)
    assert mark(rule) in out, out
    if secret is not None:
        assert text.count(secret) == 1
        assert out == text.replace(secret, mark(rule))


NEGATIVE = [
    "Failed password for invalid user admin from port 22 ssh2",  # no separator, prose
    "pam_unix(passwd:chauthtok): password changed for root",  # PAM service:module
    "sudo: bob : TTY=pts/0 ; PWD=/home/bob ; USER=root ; COMMAND=/bin/ls",  # a directory
    "pam_unix(chpasswd:chauthtok): user does not exist",
    "token_type=bearer max_tokens=100 tokens=5 password_expires_in_days",
    '{"secret": false, "token": null, "password": "", "api_key": "[REDACTED:token]"}',
    "Bearer authentication required",  # a word, not a token
    "basic auth enabled for realm admin",
    "compass=north bypass=1",
    "icon@2x.png and logo@3x.jpg",  # retina image names
    "cipher aes128-ctr@openssh.com kex curve25519-sha256@libssh.org",  # SSH algorithm names
    "order 4111111111111112 declined",  # fails Luhn
    "ts=1446249499322 id=1234567890123456789",  # epoch ms and an id: no card issuer prefix
    "GET /ad;ord=6795061899455057? HTTP/1.1",  # a cache-busting random number that passes Luhn
    "DE89370400440532013001",  # IBAN with a bad check digit
    "SSN 000-12-3456 or 666-12-3456 or 123-00-4567 or 2015-123-45-6789",
    "version 1.2.3.4.5 and Firefox/3.6.3.1 and rv:1.9.2.12",
    "at 12:34:56 mac aa:bb:cc:dd:ee:ff call Foo::bar() std::map",
    "AKIAIOSFODNN7EXAMPLEX",  # too long for an access key id
    "plain text with nothing to hide, not even a number: 42",
    # issue 10: benign text the rules used to mangle
    "Access denied for user 'root'@'localhost' (using password: YES)",
    "Access denied for user 'app'@'localhost' (using password: NO)",
    "token: expired",
    "authorization: denied",
    "Authorization: denied for user bob",
    "signature=valid",
    "api_key: missing, session_id: invalid",
    "BYPASS=1 COMPASS=north OLDPWD=/root",
    "psql --no-password app",
    "mysql --password",  # prompts: no value on the line
    "mkdir -pv /srv/app && docker run -p8080:80 app",  # -p is not a password outside a MySQL client
    "chpasswd: user does not exist",
    "htpasswd: cannot modify file",
    "pam_systemd(su:session): Cannot create session: Already running in a session",
    "cookie: missing",
    "ids 4111.1111 and 1234.5678.9012.3456",  # dotted numbers that are no card (no issuer, short)
    "disk-usage sk-SK locale, task-1234",
    "npm_config_cache=/tmp/npm",  # an npm setting, not a token
]


@pytest.mark.parametrize("text", NEGATIVE)
def test_lookalikes_are_left_alone(everything: Redactor, text: str):
    assert everything.redact(text) == text


# ------------------------------------------------------------- hard shapes


def test_json_string_with_escaped_quotes_is_redacted_whole(everything: Redactor):
    text = r'{"user":"bob","password":"p\"a\\ss w0rd","next":1}'
    assert everything.redact(text) == r'{"user":"bob","password":"[REDACTED:password]","next":1}'


def test_json_inside_a_json_string(everything: Redactor):
    secret = r"s3cr\\\"et"  # the inner value s3cr"et, escaped twice
    text = r'{"msg":"{\"password\":\"' + secret + r'\",\"u\":1}"}'
    out = everything.redact(text)
    assert out == text.replace(secret, mark("password"))
    assert "et" not in out.split("password")[1].split(",")[0]


def test_url_encoded_password_in_query_and_url(everything: Redactor):
    text = "GET /login?user=bob&password=p%40ss%26w0rd%21&next=%2Fhome HTTP/1.1"
    assert everything.redact(text) == text.replace("p%40ss%26w0rd%21", mark("password"))
    url = "postgres://admin:p%40ss%3Aw0rd@db:5432/x"
    assert everything.redact(url) == url.replace("p%40ss%3Aw0rd", mark("url-password"))


@pytest.mark.parametrize(
    "template",
    ['"{}"', "'{}'", "({})", "[{}]", "<{}>", "{};", "{},", "={}", "{}.", "\t{}\t"],
)
def test_keys_next_to_quotes_and_punctuation(everything: Redactor, template: str):
    key = "AKIAIOSFODNN7EXAMPLE"
    text = "x " + template.format(key) + " y"
    assert everything.redact(text) == text.replace(key, mark("aws-access-key-id"))


def test_pem_block_in_a_multiline_record(everything: Redactor):
    # each line of the key is masked, as when the same lines arrive one by one
    body = ["MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi", "Z1BjP5CE/Wm/Rr500P", "RK+Lh9x5eJPo5CAZ3/ANBE0sTK0ZsDGMak2m1g7"]
    begin, end = "2024-01-01 ERROR bad key: -----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----"
    lines = [begin, *body, end, "next"]
    masked = [lines[0], *[mark("private-key")] * 3, *lines[-2:]]
    assert everything.redact("\n".join(lines)) == "\n".join(masked)
    assert everything.redact_lines(lines) == masked


def test_pem_block_escaped_in_json(everything: Redactor):
    text = '{"cert":"x","key":"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0B\\n-----END PRIVATE KEY-----\\n"}'
    out = everything.redact(text)
    assert "MIIEvQIBADANBgkqhkiG9w0B" not in out
    assert "-----END PRIVATE KEY-----" in out


def test_several_rules_in_one_line_and_non_ascii_around_them(everything: Redactor):
    text = "Grüße 🎉 user=jürgen@exämple.de password=hunter2 card=4111-1111-1111-1111 ✓"
    replaced = {"jürgen@exämple.de": "email", "hunter2": "password", "4111-1111-1111-1111": "credit-card"}
    expected = text
    for secret, rule in replaced.items():
        expected = expected.replace(secret, mark(rule))
    assert everything.redact(text) == expected


def test_overlapping_candidates_resolve_leftmost(everything: Redactor):
    # pw@mail.example.com is e-mail shaped too; the URL rule starts first and wins
    text = "fetch https://bob:pw@mail.example.com/inbox"
    assert everything.redact(text) == text.replace(":pw@", f":{mark('url-password')}@")


def test_invalid_utf8_survives_as_surrogates(everything: Redactor):
    raw = b"\xff\xfe password=hunter2 \xc3"
    text = raw.decode("utf-8", "surrogateescape")
    out = everything.redact(text)
    assert out.encode("utf-8", "surrogateescape") == raw.replace(b"hunter2", mark("password").encode())


# ------------------------------------------------------------- custom rules


def redactor_for(*rules: RedactionRule, sets: list[str] | None = None, mode: str = "replace", tmp_path=None):
    section = RedactionSection(sets=["secrets", "pii"] if sets is None else sets, rules=list(rules), mode=mode)
    return Redactor.from_config(section, state_dir=tmp_path or Path("/nonexistent"))


def test_custom_rule_whole_match_value_group_and_fixed_replacement():
    whole = redactor_for(RedactionRule(name="customer-id", pattern=r"CUST-\d{8}"), sets=[])
    assert whole.redact("for CUST-12345678 done") == "for [REDACTED:customer-id] done"
    grouped = redactor_for(RedactionRule(name="pin", pattern=r"pin=(?P<value>\d{4})\b"), sets=[])
    assert grouped.redact("pin=1234 pin=12345") == "pin=[REDACTED:pin] pin=12345"
    fixed = redactor_for(RedactionRule(name="acct", pattern=r"acct-\d+", replace="acct-XXXX"), sets=[])
    assert fixed.redact("acct-991 and acct-7") == "acct-XXXX and acct-XXXX"


def test_custom_rules_come_before_built_ins():
    redactor = redactor_for(RedactionRule(name="internal-mail", pattern=r"[a-z]+@corp\.example"))
    assert redactor.redact("from ann@corp.example to bob@else.org") == (
        "from [REDACTED:internal-mail] to [REDACTED:email]"
    )


def test_a_catastrophic_backtracking_rule_on_a_100_kb_line_finishes_in_milliseconds():
    redactor = redactor_for(RedactionRule(name="evil", pattern=r"(a+)+$"), RedactionRule(name="e2", pattern=r"(x*)*y"))
    line = "a" * 100_000 + "!"
    start = time.perf_counter()
    out = redactor.redact(line)
    elapsed = time.perf_counter() - start
    assert out == line
    assert elapsed < 0.25, f"{elapsed * 1000:.1f} ms"
    start = time.perf_counter()
    assert redactor.redact(line[:-1]) == mark("evil")
    assert time.perf_counter() - start < 0.25


def test_hostile_line_of_card_candidates_stays_bounded(everything: Redactor):
    line = "4111 " * 20_000  # every group of four starts a candidate that fails Luhn
    start = time.perf_counter()
    everything.redact(line)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "shape",
    ["4111.1111.", "--password x ", "Cookie: a=b;", "password%253D", "x PASS=", "mysql -p", "sk-", "bot123456:"],
)
def test_hostile_lines_of_the_new_shapes_stay_linear(everything: Redactor, shape: str):
    line = shape * (100_000 // len(shape))
    start = time.perf_counter()
    everything.redact(line)
    everything.redact_lines([line, line])
    assert time.perf_counter() - start < 1.5


def test_a_line_of_many_key_markers_and_one_end_stays_linear(everything: Redactor):
    line = "-----BEGIN RSA PRIVATE KEY-----" * 30_000 + "-----END RSA PRIVATE KEY-----"
    start = time.perf_counter()
    out = everything.redact_lines(["x", line, "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0t"])
    assert time.perf_counter() - start < 1.5
    assert out[2].startswith("MIIE")  # the END on the same line closed them all


# ------------------------------------------------------------- config errors


def test_check_rules_names_the_rule_and_the_problem():
    section = msgspec.convert(
        {
            "sets": ["secrets", "pi", "netwrk"],
            "rules": [
                {"name": "ok", "pattern": r"\d+x"},
                {"name": "customer-id", "pattern": r"CUST-(\d{8}"},
                {"name": "backref", "pattern": r"(a)\1"},
                {"name": "empty", "pattern": r"x*"},
                {"name": "ok", "pattern": "y"},
            ],
        },
        RedactionSection,
    )
    errors = check_rules(section)
    assert "redaction.rules[1] (customer-id).pattern: missing ): CUST-(\\d{8}" in errors
    assert any(e.startswith("redaction.rules[2] (backref).pattern: invalid escape sequence") for e in errors)
    assert any(e.startswith("redaction.rules[3] (empty).pattern: matches the empty string") for e in errors)
    assert "redaction.rules[4] (ok).name: already used by redaction.rules[0]" in errors
    assert "redaction.sets[1]: unknown set 'pi'; did you mean pii?" in errors
    assert "redaction.sets[2]: unknown set 'netwrk'; did you mean network?" in errors
    assert len(errors) == 6
    assert check_rules(DEFAULT) == []


def test_bad_pattern_is_a_config_error_at_load():
    text = "[redaction]\nsets = ['secrets']\n[[redaction.rules]]\nname = 'lookahead'\npattern = 'a(?=b)'\n"
    with pytest.raises(ConfigError) as info:
        loads_config(text, registry={"collectors": {}, "outputs": {}}, environ={})
    assert info.value.errors == ["redaction.rules[0] (lookahead).pattern: invalid perl operator: (?="]


# ------------------------------------------------------------- hash mode


def test_hash_mode_correlates_equal_values_without_revealing_them(tmp_path: Path):
    redactor = redactor_for(mode="hash", tmp_path=tmp_path)
    a = redactor.redact("login bob@example.com ok")
    b = redactor.redact("logout bob@example.com")
    c = redactor.redact("login eve@example.com ok")
    tag = a.split()[1]
    assert tag.startswith("[HASH:email:") and len(tag) == len("[HASH:email:]") + 12
    assert tag in b and tag not in c and "example.com" not in a + b + c
    # a second instance (a restart) reads the same key: same hashes
    assert redactor_for(mode="hash", tmp_path=tmp_path).redact("login bob@example.com ok") == a
    key = tmp_path / "redaction.key"
    assert len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["redaction.key"]  # no temporary file left


def test_custom_replace_wins_over_hash(tmp_path: Path):
    redactor = redactor_for(
        RedactionRule(name="x", pattern="secret-\\d+", replace="<x>"), mode="hash", tmp_path=tmp_path
    )
    assert redactor.redact("a secret-1 b") == "a <x> b"


def test_unwritable_state_dir_falls_back_to_a_process_key(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="hostwatch.redact"):
        first, second = load_key(blocked / "state"), load_key(blocked / "state")
    assert len(first) == len(second) == 32 and first != second
    assert "hashes correlate only within this process" in caplog.text


def test_a_damaged_key_is_replaced(tmp_path: Path):
    (tmp_path / "redaction.key").write_bytes(b"short")
    key = load_key(tmp_path)
    assert len(key) == 32 and (tmp_path / "redaction.key").read_bytes() == key
    assert load_key(tmp_path) == key


# ------------------------------------------------------------- telemetry and batches


def test_telemetry_counts_lines_per_rule_once():
    telemetry = Telemetry()
    redactor = Redactor.from_config(DEFAULT, state_dir=Path("/nonexistent"), telemetry=telemetry)
    redactor.redact("a@example.com b@example.com password=x1")
    redactor.redact_lines(["c@example.com", "nothing", "d@example.com"])
    value = telemetry.registry.get_sample_value
    assert value("hostwatch_log_lines_redacted_total", {"rule": "email"}) == 3
    assert value("hostwatch_log_lines_redacted_total", {"rule": "password"}) == 1
    assert value("hostwatch_log_lines_redacted_total", {"rule": "iban"}) in (None, 0)


def test_redact_lines_matches_redact_one_by_one(everything: Redactor):
    # (a batch is one stream: a line that opens a key block would mask the lines after it)
    lines = [text for rule, text, _ in POSITIVE if rule != "private-key"] + NEGATIVE
    lines += ["", "multi\nline password=abc\nrecord", "ünïcödé ✓ bob@example.com", "\udcff password=x9"]
    assert everything.redact_lines(lines) == [everything.redact(x) for x in lines]
    assert everything.redact_lines(NEGATIVE) == NEGATIVE
    assert everything.redact_lines([]) == []


def test_redact_lines_matches_redact_one_by_one_on_random_batches(everything: Redactor):
    """The batch scan finds each candidate's line by counting newlines over the joined batch: random
    batches (matches first, last, next to each other, among non-ASCII and multiline records, long
    runs of clean lines) are redacted as line by line."""
    rng = random.Random(14)
    pool = [text for rule, text, _ in POSITIVE if rule != "private-key"] + NEGATIVE
    pool += ["", "multi\nline password=abc\nrecord", "ünïcödé ✓ bob@example.com", "\udcff password=x9", "x" * 300]
    for _ in range(300):
        lines = [rng.choice(pool) for _ in range(rng.randint(1, 40))]
        if rng.random() < 0.3:
            lines = [rng.choice(NEGATIVE) for _ in range(rng.randint(50, 200))] + lines
        assert everything.redact_lines(lines) == [everything.redact(x) for x in lines]


@pytest.mark.parametrize("pattern", [r"^secret\d", r"\d$", r"\Asecret\d", r"secret\d\z", r"(?m)^secret\d"])
def test_anchored_custom_rules_agree_between_batch_and_single(pattern: str):
    redactor = redactor_for(RedactionRule(name="anchored", pattern=pattern), sets=[])
    lines = ["secret1 and more", "more secret2", "x\nsecret3", "ends with 4", "secret5"]
    assert redactor.redact_lines(lines) == [redactor.redact(x) for x in lines]
    assert any("[REDACTED:anchored]" in x for x in redactor.redact_lines(lines))


def test_low_level_search_agrees_with_the_public_api():
    regex = re2.compile(r"(a)(b)?|(c)")
    search = _searcher(regex)
    for data, pos in [(b"xxab", 0), (b"xxab", 3), (b"ca", 0), (b"zz", 0), (b"cab", 1)]:
        match = regex.search(data, pos)
        expected = None if match is None else [match.span(g) for g in range(regex.groups + 1)]
        assert search(data, pos) == expected


# ------------------------------------------------------------- the agent's own secrets


class FakeOutputConfig(msgspec.Struct):
    url: str = ""
    basic_auth_password_file: str = ""
    bearer_token_file: str = ""
    headers: dict[str, str] = {}
    password: str = ""
    batch_max_items: int = 5


class FakeSpec(msgspec.Struct):
    common: object
    config: object


class FakeConfig(msgspec.Struct):
    collectors: tuple = ()
    outputs: tuple = ()


def test_config_secrets_reads_secret_files_urls_and_headers(tmp_path: Path):
    (tmp_path / "pw").write_text("file-password\n")
    (tmp_path / "tok").write_text("file-token")
    output = FakeOutputConfig(
        url="https://user:url%40pass@example.com/push",
        basic_auth_password_file=str(tmp_path / "pw"),
        bearer_token_file=str(tmp_path / "tok"),
        headers={"Authorization": "Bearer header-token", "X-Scope": "tenant-1"},
        password="inline-pw",
    )
    config = FakeConfig(outputs=(FakeSpec(common=FakeOutputConfig(), config=output),))
    found = config_secrets(config)
    assert {"file-password", "file-token", "url%40pass", "url@pass", "Bearer header-token", "header-token"} <= found
    assert "inline-pw" in found
    assert "tenant-1" not in found and "https://user:url%40pass@example.com/push" not in found


def test_config_secrets_feed_the_log_mask(tmp_path: Path):
    from agent.logsetup import setup_logging

    (tmp_path / "pw").write_text("s3cret-pw")
    config = FakeConfig(
        outputs=(FakeSpec(common=None, config=FakeOutputConfig(basic_auth_password_file=str(tmp_path / "pw"))),)
    )
    stream = io.StringIO()
    root = logging.getLogger("hostwatch")
    saved = root.handlers[:], root.level, root.propagate
    try:
        mask = setup_logging("info", stream=stream, json_lines=True)
        mask.add(config_secrets(config))
        logging.getLogger("hostwatch.test").warning("push failed for user:%s", "s3cret-pw")
    finally:
        root.handlers[:], root.level, root.propagate = saved
    assert "s3cret-pw" not in stream.getvalue() and "***" in stream.getvalue()


# ------------------------------------------------------------- hostwatch redact


def test_redact_stream_masks_a_pem_block_across_small_reads(everything: Redactor):
    body = ["MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi", "Z1BjP5CE/Wm/Rr500PRK+Lh9x5eJPo5CAZ3"]
    lines = ["start password=abc1", "-----BEGIN EC PRIVATE KEY-----", *body, "-----END EC PRIVATE KEY-----", "end"]
    raw = ("\n".join(lines)).encode() + b"\n\xff tail"
    out = io.BytesIO()
    redact_stream(everything, io.BufferedReader(io.BytesIO(raw), buffer_size=16), out, chunk=7)
    text = out.getvalue()
    assert text.split(b"\n") == [
        b"start password=[REDACTED:password]",
        b"-----BEGIN EC PRIVATE KEY-----",
        b"[REDACTED:private-key]",
        b"[REDACTED:private-key]",
        b"-----END EC PRIVATE KEY-----",
        b"end",
        b"\xff tail",
    ]
    assert not any(b.encode() in text for b in body)


def test_redact_stream_flushes_an_unterminated_block_at_the_end(everything: Redactor):
    raw = b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n"
    out = io.BytesIO()
    redact_stream(everything, io.BytesIO(raw), out)
    assert b"MIIEvQIBADANBgkqhkiG9w0B" not in out.getvalue()
    assert out.getvalue().endswith(b"\n")


def test_rules_are_plain_data():
    assert all(isinstance(rule, Rule) and rule.name for rule in ALL)
    assert {rule.name for rule in BUILTIN_SETS["network"]} == {"ipv4", "ipv6"}


def test_custom_rule_sharing_a_built_in_name_keeps_its_own_replacement():
    redactor = redactor_for(RedactionRule(name="email", pattern=r"staff-\d+", replace="<staff>"))
    assert redactor.redact("staff-7 wrote to bob@example.com") == "<staff> wrote to [REDACTED:email]"


def test_a_rule_that_can_match_empty_somewhere_never_loops():
    redactor = redactor_for(RedactionRule(name="xs", pattern=r"\bx*"), sets=[])
    assert check_rules(RedactionSection(sets=[], rules=[RedactionRule(name="xs", pattern=r"\bx*")])) == []
    assert redactor.redact("ab xx cd x") == "ab [REDACTED:xs] cd [REDACTED:xs]"
    assert redactor.redact_lines(["ab xx", "", "x"]) == ["ab [REDACTED:xs]", "", "[REDACTED:xs]"]


@pytest.mark.parametrize("secret", ["password=hunter2-is-long-enough", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"])
def test_redact_stream_never_splits_a_secret_where_it_cuts_an_overlong_line(everything: Redactor, secret: str):
    # an overlong line is written in pieces; with 64 KiB reads the first cut used to fall at 17 reads
    cut = 17 * (1 << 16)
    for at in (cut - len(secret) // 2, cut - 3):  # the key on one side and the value on the other, or a token cut
        line = "x" * at + " " + secret + " " + "y" * 300_000
        out = io.BytesIO()
        redact_stream(everything, io.BytesIO(line.encode() + b"\nnext\n"), out, chunk=1 << 16)
        expected = everything.redact(line)
        assert secret not in expected
        assert out.getvalue() == (expected + "\nnext\n").encode()


def test_a_huge_line_still_streams_in_bounded_pieces(everything: Redactor):
    # a value with no end in sight (one 3 MiB token) is still written out, never held whole
    writes: list[int] = []

    class Recorder(io.BytesIO):
        def write(self, data: bytes) -> int:
            writes.append(len(data))
            return super().write(data)

    line = b"token=" + b"a" * (3 << 20)
    out = Recorder()
    redact_stream(everything, io.BytesIO(line + b"\n"), out, chunk=1 << 16)
    assert len(writes) >= 2 and max(writes) <= (2 << 20) + (1 << 16)
    assert b"token=[REDACTED:token]" in out.getvalue()


# ------------------------------------------------------------------ the protocol plugins depend on


def protocol_members() -> set[str]:
    from agent import plugin

    return {name for name in vars(plugin.Redactor) if not name.startswith("_")}


def test_the_engine_implements_the_redactor_protocol(everything: Redactor) -> None:
    import inspect

    from agent import plugin

    assert isinstance(everything, plugin.Redactor)
    assert protocol_members() == {"redact", "redact_lines", "streams", "safe_cut"}
    for name in protocol_members():
        declared = inspect.signature(getattr(plugin.Redactor, name))
        implemented = inspect.signature(getattr(Redactor, name))
        assert list(declared.parameters) == list(implemented.parameters), name
        assert [p.default for p in declared.parameters.values()] == [
            p.default for p in implemented.parameters.values()
        ], name
    line = "push with ghp_16C7e42F292c6912E7710c838347Ae178B4a!"
    assert everything.streams()([line], "a.log") == [f"push with {mark('github-token')}!"]


def test_redactor_users_call_only_the_protocol() -> None:
    """Every member the collectors and ``hostwatch redact`` use is declared; none is probed
    with getattr/hasattr (which would mean an undeclared, optional part)."""
    import ast

    root = Path(__file__).resolve().parents[2]
    sources = [*root.joinpath("collectors").rglob("*.py"), root / "agent" / "redact.py", root / "agent" / "cli.py"]

    def is_redactor(node: ast.AST) -> bool:
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        return name in ("redactor", "_redactor")

    used: dict[str, set[str]] = {}
    for source in sources:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_redactor(node.value):
                used.setdefault(node.attr, set()).add(source.name)
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
            ):
                assert not (node.args and is_redactor(node.args[0])), f"{source}:{node.lineno} probes the redactor"
    assert {"redact", "redact_lines", "streams", "safe_cut"} <= set(used)  # the scan does see the users
    undeclared = {name: files for name, files in used.items() if name not in protocol_members()}
    assert not undeclared
