"""Each built-in detector finds its providers' documented formats and leaves ordinary values.

Fake secrets are assembled at test time from a seeded random generator, so this
file holds nothing a secret scanner would flag.
"""

from __future__ import annotations

import base64
import json
import random
import string

import pytest

from pathwarden.masking import MaskOptions, engine_for

B62 = string.ascii_letters + string.digits
B64 = B62 + "+/"
URL64 = B62 + "-_"
HEX = "0123456789abcdef"
UPPER32 = string.ascii_uppercase + "234567"


class Fake:
    """Random-looking bodies in each provider's shape, deterministic per seed."""

    def __init__(self, seed: int = 1234) -> None:
        self.r = random.Random(seed)

    def s(self, n: int, alphabet: str = B62) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def pem(self, kind: str = "RSA ", lines: int = 12, escaped: bool = False,
            headers: bool = False) -> str:
        nl = "\\n" if escaped else "\n"
        body = [self.s(64, B64) for _ in range(lines)] + [self.s(20, B64) + "=="]
        head = ["Proc-Type: 4,ENCRYPTED", f"DEK-Info: AES-128-CBC,{self.s(32, HEX).upper()}",
                ""] if headers else []
        return nl.join([f"-----BEGIN {kind}PRIVATE KEY-----", *head, *body,
                        f"-----END {kind}PRIVATE KEY-----"]) + nl

    def jwt(self) -> str:
        def enc(obj: object) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
        return (enc({"alg": "HS256", "typ": "JWT"}) + "." +
                enc({"sub": self.s(8), "exp": 1700000000, "scope": "read"}) + "." +
                self.s(43, URL64))

    def card(self) -> str:
        digits = [4] + [self.r.randrange(10) for _ in range(14)]
        total = 0
        for i, d in enumerate(reversed(digits)):
            d = d * 2 if i % 2 == 0 else d
            total += d - 9 if d > 9 else d
        digits.append((10 - total % 10) % 10)
        s = "".join(map(str, digits))
        return " ".join(s[i:i + 4] for i in range(0, 16, 4))

    def iban(self) -> str:
        bban = "".join(str(self.r.randrange(10)) for _ in range(18))
        num = int("".join(str(int(c, 36)) for c in bban + "DE00"))
        return f"DE{98 - num % 97:02d}{bban}"


def samples(seed: int = 1234) -> dict[str, list[tuple[str, str]]]:
    """detector name -> [(text, secret)]: the secret must disappear from the text."""
    f = Fake(seed)
    ak = "AKIA" + f.s(16, UPPER32)
    sk40 = f.s(40, B64)
    az = f.s(86, B64) + "=="
    gh = "ghp_" + f.s(36)
    pem = f.pem()
    jwt = f.jwt()
    return {
        "aws-access-key": [(f"aws_access_key_id = {ak}", ak),
                           (s := "ASIA" + f.s(16, UPPER32), s),
                           (f'{{"AccessKeyId": "{(t := "AKIA" + f.s(16, UPPER32))}"}}', t)],
        "aws-secret-key": [(f"aws_secret_access_key = {sk40}", sk40),
                           (f'"SecretAccessKey": "{(t := f.s(40, B64))}",', t),
                           (f"export AWS_SECRET_ACCESS_KEY={(u := f.s(40, B64))}", u)],
        "gcp-service-account": [
            (json.dumps({"type": "service_account", "private_key_id": f.s(40, HEX),
                         "private_key": (p := f.pem(kind="")),
                         "client_email": "ci@proj.iam.gserviceaccount.com"}),
             p.splitlines()[3]),
            (f'{{"name": "keys/1", "privateKeyData": "{(d := f.s(400, B64) + "=")}"}}', d)],
        "gcp-api-key": [(f"key={(g := 'AIza' + f.s(35, URL64))}&q=1", g)],
        "azure-storage-key": [(f'[{{"keyName": "key1", "value": "{az}"}}]', az)],
        "azure-connection-string": [
            (f"DefaultEndpointsProtocol=https;AccountName=ci;AccountKey={(k := f.s(86, B64))}==;"
             "EndpointSuffix=core.windows.net", k),
            (f"https://ci.blob.core.windows.net/c?sv=2022-11-02&ss=b&sig={(sg := f.s(40))}%3D",
             sg)],
        "github-token": [(f"Authorization-less: {gh}", gh),
                         (t := "gho_" + f.s(36), t), (t2 := "ghs_" + f.s(36), t2),
                         (t3 := "github_pat_" + f.s(22) + "_" + f.s(59), t3)],
        "gitlab-token": [(t := "glpat-" + f.s(20, URL64), t), (t2 := "gldt-" + f.s(20), t2),
                         (f"runner token glrt-{(t3 := f.s(20))}", t3)],
        "slack-token": [(t := f"xoxb-{f.s(11, '0123456789')}-{f.s(13, '0123456789')}-{f.s(24)}",
                         t),
                        (t2 := f"xoxp-{f.s(11, '0123456789')}-{f.s(12, '0123456789')}-"
                               f"{f.s(32, HEX)}", t2)],
        "slack-webhook": [(f"https://hooks.slack.com/services/T{f.s(8, UPPER32)}/"
                           f"B{f.s(8, UPPER32)}/{(w := f.s(24))}", w)],
        "stripe-key": [(t := "sk_live_" + f.s(24), t), (t2 := "rk_live_" + f.s(24), t2),
                       (t3 := "sk_test_" + f.s(99), t3)],
        "twilio-key": [(t := "SK" + f.s(32, HEX), t),
                       (f"curl -u AC{f.s(32, HEX)}:{(a := f.s(32, HEX))} https://api.twilio.com",
                        a)],
        "sendgrid-key": [(t := f"SG.{f.s(22, URL64)}.{f.s(43, URL64)}", t)],
        "mailgun-key": [(f"api:{(t := 'key-' + f.s(32, HEX))}", t)],
        "datadog-key": [(f"DD_API_KEY={(d1 := f.s(32, HEX))}", d1),
                        (f"datadog_app_key: {(d2 := f.s(40, HEX))}", d2)],
        "npm-token": [(f"//registry.npmjs.org/:_authToken={(t := 'npm_' + f.s(36))}", t)],
        "pypi-token": [(t := "pypi-AgEIcHlwaS5vcmc" + f.s(120, URL64), t)],
        "dockerhub-token": [(t := "dckr_pat_" + f.s(27, URL64), t)],
        "openai-key": [(t := "sk-proj-" + f.s(100, URL64), t),
                       (t2 := "sk-" + f.s(20) + "T3BlbkFJ" + f.s(20), t2)],
        "anthropic-key": [(t := "sk-ant-api03-" + f.s(93, URL64) + "AA", t)],
        "jwt": [(f"id_token={jwt}", jwt), (f'{{"jwt": "{(j2 := f.jwt())}"}}', j2)],
        "private-key": [
            (pem, pem.splitlines()[5]),
            (f.pem(kind="EC "), ""), (f.pem(kind="OPENSSH "), ""), (f.pem(kind="ENCRYPTED "), ""),
            (f.pem(kind="DSA "), ""),
            (f"PRIVATE_KEY={f.pem(escaped=True)}", ""),
            (f.pem(headers=True), "")],
        "uri-credentials": [
            (f"postgres://app:{(p1 := f.s(16))}@db.internal:5432/app", p1),
            (f"postgresql://app:{(p2 := f.s(12))}@db/app?sslmode=require", p2),
            (f"mysql://root:{(p3 := f.s(12))}@127.0.0.1:3306/x", p3),
            (f"mariadb://u:{(p4 := f.s(12))}@h/x", p4),
            (f"mongodb+srv://ci:{(p5 := f.s(12))}@cluster0.ab.mongodb.net/?retryWrites=true", p5),
            (f"REDIS_URL=redis://:{(p6 := f.s(12))}@cache:6379/0", p6),
            (f"rediss://default:{(p7 := f.s(12))}@cache:6380", p7),
            (f"amqps://guest:{(p8 := f.s(12))}@mq/vhost", p8),
            (f"git clone https://ci:{(p9 := f.s(20))}@git.example.com/x.git", p9),
            (f"ftp://anon:{(pa := f.s(10))}@ftp.example.com/", pa),
            (f"jdbc:postgresql://db:5432/app?user=ci&password={(pb := f.s(12))}&ssl=true", pb),
            (f"jdbc:sqlserver://db:1433;databaseName=app;user=ci;password={(pc := f.s(12))};",
             pc)],
        "authorization-header": [
            (f"> Authorization: Bearer {(b1 := f.s(40))}", b1),
            (f"curl -H 'Authorization: token {(b2 := f.s(40, HEX))}' https://x", b2),
            (f'{{"Authorization": "Basic {(b3 := f.s(28, B64))}="}}', b3)],
        "cookie-header": [(f"Cookie: session={(c1 := f.s(32))}; theme=dark", c1),
                          (f"< Set-Cookie: sid={(c2 := f.s(32))}; Path=/; HttpOnly", c2)],
        "generic-assignment": [
            ("password=hunter2x9", "hunter2x9"),
            (f"passwd: {(g1 := f.s(12))}", g1),
            (f"secret: {(g2 := f.s(12))}", g2),
            (f"api_key={(g3 := f.s(24))}", g3),
            (f'{{"token": "{(g4 := f.s(30))}"}}', g4),
            (f"DB_PASSWORD={(g5 := f.s(14))}", g5),
            (f'client_secret = "{(g6 := f.s(24))}"', g6),
            (f"PGPASSWORD={(g7 := f.s(10))} psql -h db", g7),
            (f"ALTER ROLE app WITH LOGIN PASSWORD '{(g8 := f.s(12))}';", g8),
            (f"CREATE USER 'ci'@'%' IDENTIFIED BY '{(g9 := f.s(12))}';", g9),
            (f"  refresh_token: {(ga := f.s(40))}", ga),
            (f"mysql --password {(gb := f.s(12))} -h db", gb)],
    }


def pii_samples(seed: int = 99) -> dict[str, list[tuple[str, str]]]:
    f = Fake(seed)
    return {
        "email": [(f"author: {(e := f.s(8).lower() + '.dev@example.org')}", e)],
        "payment-card": [(f"card {(c := f.card())} exp 12/29", c),
                         (c2 := f.card().replace(" ", ""), c2),
                         (c3 := f.card().replace(" ", "-"), c3)],
        "iban": [(f"IBAN: {(i := f.iban())}", i)],
    }


ENGINE = engine_for(MaskOptions())
PII_ENGINE = engine_for(MaskOptions(pii=frozenset({"email", "payment-card", "iban"})))


def _cases(table: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str, str]]:
    return [(name, text, secret) for name, rows in table.items() for text, secret in rows]


@pytest.mark.parametrize(("name", "text", "secret"), _cases(samples()))
def test_secret_detector_masks_documented_format(name: str, text: str, secret: str) -> None:
    masked, counts = ENGINE.mask_text(text)
    assert f"[MASKED:{name}]" in masked, masked
    assert counts.get(name, 0) >= 1
    if secret:
        assert secret not in masked
    if name == "private-key":
        body = [ln for ln in text.replace("\\n", "\n").splitlines()
                if len(ln) == 64 and "-" not in ln]
        assert body and not any(ln in masked for ln in body)


@pytest.mark.parametrize(("name", "text", "secret"), _cases(pii_samples()))
def test_pii_detector_masks_when_enabled(name: str, text: str, secret: str) -> None:
    masked, counts = PII_ENGINE.mask_text(text)
    assert secret not in masked and counts == {name: 1}


@pytest.mark.parametrize(("name", "text", "secret"), _cases(pii_samples()))
def test_pii_detectors_are_off_by_default(name: str, text: str, secret: str) -> None:
    assert ENGINE.mask_text(text) == (text, {})


def test_every_builtin_detector_has_samples() -> None:
    assert set(samples()) == set(ENGINE.detector_names)


_f = Fake(7)
NEGATIVES = [
    "request_id=6f1c2a9e-3b4d-4c5e-9f80-1a2b3c4d5e6f",
    "id: 550e8400-e29b-41d4-a716-446655440000",
    f"commit {_f.s(40, HEX)}",
    f"sha256:{_f.s(64, HEX)}",
    f"Merge {_f.s(7, HEX)}..{_f.s(7, HEX)}",
    f"etag: {_f.s(32, HEX)}",
    base64.b64encode(b"The quick brown fox jumps over the lazy dog again and again").decode(),
    f'"integrity": "sha512-{_f.s(86, B64)}=="',
    "password=changeme",
    "password: ${DB_PASSWORD}",
    "password: $DB_PASSWORD",
    "password: '{{ db_password }}'",
    "password=<redacted>",
    'password: "****"',
    "password=[MASKED:generic-assignment]",
    "password: null",
    "password=",
    'secret: ""',
    "token: true",
    "api_key: xxxxxxxxxxxx",
    "password: None",
    "token_count: 5",
    "tokens_used=1234",
    "password_changed_at: 2024-01-01T00:00:00Z",
    "secret_santa: bob",
    "auth_method: scram-sha-256",
    "private_key_id: " + _f.s(40, HEX),
    "nextPageToken: " + _f.s(30),
    "token: 12345",
    "auth: required",
    "PWD=/home/runner/work/app/app",
    "Authorization: Bearer $GITHUB_TOKEN",
    "Authorization: Bearer ${{ secrets.DEPLOY_TOKEN }}",
    "postgres://app@db:5432/app",
    "https://example.com:8443/path?q=1",
    "AKIAXXXXXXXXXXXXXXXX",
    "-----BEGIN CERTIFICATE-----\n" + _f.s(64, B64) + "\n-----END CERTIFICATE-----\n",
    "-----BEGIN PUBLIC KEY-----\n" + _f.s(64, B64) + "\n-----END PUBLIC KEY-----\n",
    "eyJub3RhbGciOiAxfQ.eyJzdWIiOiAxfQ.abc",  # header without "alg"
    "card 4111 1111 1111 1112",
    "ts=1715234567890123",
    "SELECT id, name FROM users WHERE password_hash IS NULL",
    "kind: Secret\nmetadata:\n  name: db-secret\ntype: Opaque",
    "secretKeyRef:\n  name: db\n  key: password",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_ordinary_values_are_left_alone(text: str) -> None:
    assert PII_ENGINE.mask_text(text) == (text, {})


def test_generic_assignment_needs_a_random_value_for_weak_keys() -> None:
    assert ENGINE.mask_text("token: my-ci-runner")[1] == {}
    assert ENGINE.mask_text("token: a8f3kd92QxZ")[1] == {"generic-assignment": 1}


def test_generic_assignment_masks_any_real_value_for_strong_keys() -> None:
    masked, counts = ENGINE.mask_text("password: abc")
    assert masked == "password: [MASKED:generic-assignment]" and counts


def test_only_the_value_of_an_assignment_is_replaced() -> None:
    assert ENGINE.mask_text("password=hunter2x9")[0] == "password=[MASKED:generic-assignment]"
    assert ENGINE.mask_text('{"password": "p4ss word"}')[0] == (
        '{"password": "[MASKED:generic-assignment]"}')


def test_uri_credentials_mask_only_the_password() -> None:
    masked, _ = ENGINE.mask_text("postgres://app:Pw9xk2LqzT@db:5432/app")
    assert masked == "postgres://app:[MASKED:uri-credentials]@db:5432/app"


def test_a_password_with_an_at_sign_is_masked_whole() -> None:
    masked, _ = ENGINE.mask_text("mysql://root:p@ss9Word@db/x")
    assert masked == "mysql://root:[MASKED:uri-credentials]@db/x"


def test_private_key_keeps_its_markers() -> None:
    pem = Fake(3).pem()
    masked, counts = ENGINE.mask_text("key:\n" + pem + "done\n")
    assert masked == ("key:\n-----BEGIN RSA PRIVATE KEY-----[MASKED:private-key]"
                      "-----END RSA PRIVATE KEY-----\ndone\n")
    assert counts == {"private-key": 1}


def test_truncated_private_key_is_masked_up_to_the_first_prose_line() -> None:
    f = Fake(4)
    text = "-----BEGIN PRIVATE KEY-----\n" + f.s(64, B64) + "\n" + f.s(30, B64) + "\nnext step ok\n"
    masked, _ = ENGINE.mask_text(text)
    assert masked == "-----BEGIN PRIVATE KEY-----[MASKED:private-key]next step ok\n"


# ---------------------------------------------------------------- Kubernetes env pairs

_k = Fake(21)
_K8S_PW = _k.s(16)
_K8S_AWS = _k.s(40, B64)
_K8S_DD = _k.s(32, HEX)


@pytest.mark.parametrize(("text", "secret"), [
    (f'        - name: DB_PASSWORD\n          value: "{_K8S_PW}"\n', _K8S_PW),
    (f"        - name: DB_PASSWORD\n          value: '{_K8S_PW}'\n", _K8S_PW),
    (f"        - name: DB_PASSWORD\n          value: {_K8S_PW}\n", _K8S_PW),
    (f'- name: AWS_SECRET_ACCESS_KEY\n  value: "{_K8S_AWS}"\n', _K8S_AWS),
    (f"- name: DD_API_KEY\r\n  value: {_K8S_DD}  # from vault\r\n", _K8S_DD),
    (f'- name: API_KEY\n  value: "token {_K8S_DD}"\n', _K8S_DD),
    (f'- name: "REDIS_PASSWORD"\n  "value": "{_K8S_PW}"\n', _K8S_PW),
    (f'{{"name": "API_TOKEN", "value": "{_K8S_DD}"}}', _K8S_DD),
    (f"env: [{{name: SECRET_KEY, value: {_K8S_PW}}}]", _K8S_PW),
])
def test_kubernetes_env_value_under_a_sensitive_name_is_masked(text: str, secret: str) -> None:
    masked, counts = ENGINE.mask_text(text)
    assert secret not in masked and counts, masked
    assert "name:" in masked or '"name":' in masked  # the name stays


@pytest.mark.parametrize("text", [
    "- name: LOG_LEVEL\n  value: \"" + _K8S_PW + "\"\n",
    "- name: DB_PASSWORD_FILE\n  value: /run/secrets/db\n",
    "- name: DB_PASSWORD\n  valueFrom:\n    secretKeyRef:\n      name: db\n      key: password\n",
    "- name: DB_PASSWORD\n  value: \"${DB_PASSWORD}\"\n",
    "- name: API_TOKEN\n  value: \"changeme\"\n",
    "- name: API_TOKEN\n  value: \"\"\n",
    "hostname: DB_PASSWORD\n  value: " + _K8S_PW + "\n",
])
def test_kubernetes_env_pairs_that_hold_no_secret_are_left_alone(text: str) -> None:
    assert ENGINE.mask_text(text) == (text, {})


# ---------------------------------------------------------------- 32 hex digits

_HEX32 = Fake(22).s(32, HEX)


@pytest.mark.parametrize("text", [
    f"auth_token: {_HEX32}", f"apiToken: {_HEX32}", f'"access_token": "{_HEX32}"',
    f"client_secret={_HEX32}", f"TWILIO_AUTH={_HEX32}",
])
def test_32_hex_digits_under_a_sensitive_key_are_a_secret(text: str) -> None:
    masked, counts = ENGINE.mask_text(text)
    assert _HEX32 not in masked and counts, masked


@pytest.mark.parametrize("text", [
    f"request {_HEX32} done",
    f"etag: {_HEX32}",
    f"md5sum {_HEX32}  app.tar.gz",
    "auth_token: 6f1c2a9e-3b4d-4c5e-9f80-1a2b3c4d5e6f",  # a dashed UUID is an id
])
def test_hex_and_uuids_outside_sensitive_keys_are_left_alone(text: str) -> None:
    assert ENGINE.mask_text(text) == (text, {})


# ---------------------------------------------------------------- unquoted value ends

_PUNCT = "Xq9" + "&" + _k.s(8) + ";" + _k.s(6) + "," + _k.s(5)


@pytest.mark.parametrize("text", [
    f"APP_SECRET={_PUNCT}",
    f"APP_SECRET={_PUNCT}\nNEXT=1",
    f"export APP_SECRET={_PUNCT} && make",
    f"  run: APP_SECRET={_PUNCT} ./deploy",
    f"\tDB_PASSWORD={_PUNCT}",
    f"password: {_PUNCT}",
    f"  - password: {_PUNCT}",
])
def test_line_style_values_run_to_the_first_blank(text: str) -> None:
    masked, counts = ENGINE.mask_text(text)
    assert counts == {"generic-assignment": 1}, masked
    for part in _PUNCT.replace("&", " ").replace(";", " ").replace(",", " ").split():
        assert part not in masked, masked


def test_query_string_and_connection_string_values_end_at_their_separators() -> None:
    secret = _k.s(14)
    masked, _ = ENGINE.mask_text(f"GET https://api.example.com/v1?client_secret={secret}&page=2")
    assert masked.endswith("&page=2") and secret not in masked
    masked, _ = ENGINE.mask_text(f"?access_token={secret}&state=abc")
    assert masked == "?access_token=[MASKED:generic-assignment]&state=abc"
    masked, _ = ENGINE.mask_text(f"Server=db;Password={secret};Database=app")
    assert masked.endswith(";Database=app") and secret not in masked
    masked, _ = ENGINE.mask_text(f'{{"password": {secret}, "user": "bob"}}')
    assert masked.endswith(', "user": "bob"}') and secret not in masked
    # a placeholder followed by a comma in a flow mapping stays a placeholder
    assert ENGINE.mask_text("{password: null, user: x}")[1] == {}
