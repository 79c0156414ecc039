"""A seeded generator of realistic CI output with planted, labelled fake secrets.

The output imitates what a CI job prints: psql aligned tables, JSON API
responses, application logs with stack traces and curl traces, ``env`` dumps,
``kubectl get -o yaml`` manifests, ``git log``, and build-tool output (docker,
npm, pip). Two variants:

* ``typical``: mostly benign output, a planted secret every few KiB;
* ``keyword-dense``: configuration-heavy output full of ``password:``,
  ``token=``, ``secret`` keys whose values are harmless (placeholders such as
  ``${DB_PASSWORD}``, ``changeme``, ``****``, booleans, TTLs, secret *names*),
  and planted secrets several times as often.

Every planted secret is built at run time from the provider's documented
format with a random body from the seeded RNG (nothing secret-looking is
written literally in this file: prefixes are assembled by concatenation), and
recorded as a :class:`Label` ``(start, end, detector, shape)`` over the byte
offsets of the generated data. The span is the part that must not leak (the
password of a URI, the token after ``Bearer``, the base64 body of a PEM key).
Hard negatives (UUIDs, hashes, git shas, request ids, versions, base64 of
ordinary data, placeholder passwords, AKIA-lookalikes that break the format)
are labelled too, with ``detector`` set to the kind of negative.

``plant=False`` produces a benign-only corpus: the same documents, the same hard
negatives, no secrets.

Run ``python -m benchmarks.mask_engine.corpus --size-mb 1 --out /tmp/c.txt`` to
write a sample and its labels (``/tmp/c.txt.labels.json``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import string
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

UP = string.ascii_uppercase
LO = string.ascii_lowercase
DIG = string.digits
ALNUM = UP + LO + DIG
UPDIG = UP + DIG
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"

VARIANTS = ("typical", "keyword-dense")


class S(NamedTuple):
    """A planted secret inside generated text."""

    text: str
    det: str


class N(NamedTuple):
    """A hard negative inside generated text (must not be masked)."""

    text: str
    kind: str


Part = str | S | N


@dataclass(frozen=True, slots=True)
class Label:
    start: int
    end: int
    detector: str  # detector name for secrets, kind of negative for negatives
    shape: str  # where it was planted: "<document kind>/<style>"


@dataclass(slots=True)
class Corpus:
    variant: str
    seed: int
    plant: bool
    data: bytes
    secrets: list[Label]
    negatives: list[Label]
    docs: list[tuple[int, int, str]]  # (start, end, document kind)


# --------------------------------------------------------------------------- helpers
def rs(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choices(alphabet, k=n))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def ts(rng: random.Random) -> str:
    return (
        f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z"
    )


def uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def sha1(rng: random.Random) -> str:
    return rs(rng, HEX, 40)


def sha256(rng: random.Random) -> str:
    return rs(rng, HEX, 64)


_WORDS = (
    "alpha bravo cache deploy edge fleet gateway harbor ingest job kernel ledger metrics nightly "
    "orders payments queue render search ticket upload vault worker billing catalog checkout "
    "inventory notify profile report session shipping storage"
)
WORDS = tuple(_WORDS.split())
SERVICES = ("api", "web", "worker", "billing", "search", "auth", "orders", "notifier", "ingest")
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
HOSTS = ("db", "db.internal", "pg-primary.prod.svc", "10.0.3.17", "mysql-1", "redis", "mq")


CONFIG_VALUES = ("true", "info", "30s", "eu-west-1", "https://cdn.example.com/assets")


def word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def version(rng: random.Random) -> str:
    v = f"{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 20)}"
    if rng.random() < 0.2:
        v += rng.choice(("-rc.1", "-beta.2", "+build.517", ".post1", "-alpine"))
    return v


# --------------------------------------------------------------------------- planted secrets
# Each maker returns the parts of one planted secret with the context that belongs
# to the value itself (a URI around its password, "Bearer " before a token); the
# key or variable name around it comes from the detector's spec.
Maker = Callable[[random.Random, str], list[Part]]


def _aws_access(rng: random.Random, style: str) -> list[Part]:
    return [S(rng.choice(("AK" + "IA", "AS" + "IA")) + rs(rng, UPDIG, 16), "aws-access-key")]


def _aws_secret(rng: random.Random, style: str) -> list[Part]:
    return [S(rs(rng, ALNUM + "+/", 40), "aws-secret-key")]


def _pem_body(rng: random.Random, nbytes: int, width: int = 64) -> list[str]:
    body = b64(rng.randbytes(nbytes))
    return [body[i : i + width] for i in range(0, len(body), width)]


def _gcp_sa(rng: random.Random, style: str) -> list[Part]:
    project = f"{word(rng)}-{word(rng)}-{rng.randint(100000, 999999)}"
    head, tail = "-----BEGIN " + "PRIVATE KEY-----\\n", "\\n-----END " + "PRIVATE KEY-----\\n"
    body = "\\n".join(_pem_body(rng, 1216))
    fields: list[tuple[str, list[Part]]] = [
        ("type", ["service_account"]),
        ("project_id", [project]),
        ("private_key_id", [sha1(rng)]),
        ("private_key", [head, S("MIIE" + body, "gcp-service-account"), tail]),
        ("client_email", [f"ci-deployer@{project}.iam.gserviceaccount.com"]),
        ("client_id", [str(rng.randint(10**20, 10**21))]),
        ("auth_uri", ["https://accounts.google.com/o/oauth2/auth"]),
        ("token_uri", ["https://oauth2.googleapis.com/token"]),
    ]
    out: list[Part] = []
    if style == "env":  # one line, as in GOOGLE_CREDENTIALS={...}
        out.append("{")
        for i, (k, v) in enumerate(fields):
            out += [("," if i else "") + f'"{k}":"', *v, '"']
        out.append("}")
    else:  # `cat key.json` in a log
        out.append("{\n")
        for i, (k, v) in enumerate(fields):
            out += [f'  "{k}": "', *v, '"' + (",\n" if i < len(fields) - 1 else "\n")]
        out.append("}")
    return out


def _gcp_api(rng: random.Random, style: str) -> list[Part]:
    return [S("AI" + "za" + rs(rng, ALNUM + "-_", 35), "gcp-api-key")]


def _azure_key(rng: random.Random, style: str) -> list[Part]:
    return [S(b64(rng.randbytes(64)), "azure-storage-key")]


def _azure_conn(rng: random.Random, style: str) -> list[Part]:
    if rng.random() < 0.7:
        acct = f"{word(rng)}{rng.randint(10, 99)}store"
        return [
            f"DefaultEndpointsProtocol=https;AccountName={acct};AccountKey=",
            S(b64(rng.randbytes(64)), "azure-connection-string"),
            ";EndpointSuffix=core.windows.net",
        ]
    ns = f"{word(rng)}-{rng.randint(1, 9)}-bus"
    return [
        f"Endpoint=sb://{ns}.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey"
        ";SharedAccessKey=",
        S(b64(rng.randbytes(32)), "azure-connection-string"),
    ]


def _github(rng: random.Random, style: str) -> list[Part]:
    if rng.random() < 0.2:
        tok = "github_" + "pat_" + rs(rng, UPDIG, 22) + "_" + rs(rng, ALNUM, 59)
    else:
        tok = "gh" + rng.choice("pousr") + "_" + rs(rng, ALNUM, 36)
    return [S(tok, "github-token")]


def _gitlab(rng: random.Random, style: str) -> list[Part]:
    r = rng.random()
    if r < 0.6:
        tok = "gl" + "pat-" + rs(rng, ALNUM + "-_", 20)
    elif r < 0.75:
        tok = "gl" + "dt-" + rs(rng, ALNUM + "-_", 20)
    elif r < 0.9:
        tok = "gl" + "rt-" + rs(rng, ALNUM + "-_", 20)
    else:
        tok = "gl" + "ptt-" + rs(rng, HEX, 40)
    return [S(tok, "gitlab-token")]


def _slack_token(rng: random.Random, style: str) -> list[Part]:
    r = rng.random()
    if r < 0.5:
        tok = "xo" + "xb-" + rs(rng, DIG, 12) + "-" + rs(rng, DIG, 13) + "-" + rs(rng, ALNUM, 24)
    elif r < 0.8:
        tok = (
            "xo"
            + "xp-"
            + rs(rng, DIG, 12)
            + "-"
            + rs(rng, DIG, 12)
            + "-"
            + rs(rng, DIG, 13)
            + "-"
            + rs(rng, HEX, 32)
        )
    else:
        tok = "xa" + "pp-1-A" + rs(rng, UPDIG, 10) + "-" + rs(rng, DIG, 13) + "-" + rs(rng, HEX, 64)
    return [S(tok, "slack-token")]


def _slack_webhook(rng: random.Random, style: str) -> list[Part]:
    return [
        "https://hooks.slack.com/services/T" + rs(rng, UPDIG, 8) + "/B" + rs(rng, UPDIG, 10) + "/",
        S(rs(rng, ALNUM, 24), "slack-webhook"),
    ]


def _stripe(rng: random.Random, style: str) -> list[Part]:
    prefix = rng.choice(("sk" + "_live_", "rk" + "_live_", "sk" + "_test_"))
    return [S(prefix + rs(rng, ALNUM, rng.choice((24, 34, 99))), "stripe-key")]


def _twilio(rng: random.Random, style: str) -> list[Part]:
    return [S("SK" + rs(rng, HEX, 32), "twilio-key")]


def _sendgrid(rng: random.Random, style: str) -> list[Part]:
    return [S("SG." + rs(rng, B64URL, 22) + "." + rs(rng, B64URL, 43), "sendgrid-key")]


def _mailgun(rng: random.Random, style: str) -> list[Part]:
    return [S("key-" + rs(rng, HEX, 32), "mailgun-key")]


def _datadog(rng: random.Random, style: str) -> list[Part]:
    return [S(rs(rng, HEX, 32), "datadog-key")]


def _npm(rng: random.Random, style: str) -> list[Part]:
    return [S("np" + "m_" + rs(rng, ALNUM, 36), "npm-token")]


def _pypi(rng: random.Random, style: str) -> list[Part]:
    macaroon = b"\x02\x01\x08" + b"pypi" + b".org\x02" + rng.randbytes(rng.randint(100, 160))
    return [S("py" + "pi-" + b64url(macaroon), "pypi-token")]


def _dockerhub(rng: random.Random, style: str) -> list[Part]:
    return [S("dckr" + "_pat_" + rs(rng, B64URL, 27), "dockerhub-token")]


def _openai(rng: random.Random, style: str) -> list[Part]:
    if rng.random() < 0.5:
        tok = "sk-" + rs(rng, ALNUM, 20) + "T3Blbk" + "FJ" + rs(rng, ALNUM, 20)
    else:
        body = rs(rng, B64URL, 74) + "T3Blbk" + "FJ" + rs(rng, B64URL, 74)
        tok = "sk-" + rng.choice(("proj-", "svcacct-")) + body
    return [S(tok, "openai-key")]


def _anthropic(rng: random.Random, style: str) -> list[Part]:
    return [S("sk-" + "ant-" + "api03-" + rs(rng, B64URL, 93) + "AA", "anthropic-key")]


def _jwt(rng: random.Random, style: str) -> list[Part]:
    header = {"alg": rng.choice(("RS256", "HS256", "ES256")), "typ": "JWT"}
    if rng.random() < 0.5:
        header["kid"] = rs(rng, HEX, 16)
    payload = {
        "sub": uid(rng),
        "iss": rng.choice(
            (
                "https://auth.example.com/",
                "gitlab.com",
                "https://token.actions.githubusercontent.com",
            )
        ),
        "iat": 1715000000 + rng.randint(0, 10**6),
        "exp": 1716000000 + rng.randint(0, 10**6),
        "scope": rng.choice(("read:deploy", "ci", "openid profile")),
    }
    tok = ".".join(
        (
            b64url(json.dumps(header, separators=(",", ":")).encode()),
            b64url(json.dumps(payload, separators=(",", ":")).encode()),
            b64url(rng.randbytes(rng.choice((32, 64, 256)))),
        )
    )
    return [S(tok, "jwt")]


PEM_KINDS = ("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY")


def _private_key(rng: random.Random, style: str) -> list[Part]:
    kind = rng.choice(PEM_KINDS)
    nbytes = {"EC PRIVATE KEY": 121, "OPENSSH PRIVATE KEY": 400}.get(kind, 1190)
    width = 70 if kind.startswith("OPENSSH") else 64
    lines = _pem_body(rng, nbytes, width)
    if style == "yaml":  # a block scalar under a key, indented four spaces
        ind = "    "
        return [
            "|\n" + ind + "-----BEGIN " + kind + "-----\n" + ind,
            S(("\n" + ind).join(lines), "private-key"),
            "\n" + ind + "-----END " + kind + "-----",
        ]
    return [
        "-----BEGIN " + kind + "-----\n",
        S("\n".join(lines), "private-key"),
        "\n-----END " + kind + "-----",
    ]


def _password(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return rs(rng, ALNUM, rng.randint(16, 32))
    if r < 0.6:
        return rs(rng, HEX, rng.choice((32, 48, 64)))
    if r < 0.8:
        return rs(rng, ALNUM + "!#%^&*-_.", rng.randint(14, 28))
    # a human-made one: capitalised word, digits, a symbol
    return (
        word(rng).capitalize()
        + rng.choice(WORDS).capitalize()
        + str(rng.randint(10, 9999))
        + rng.choice("!#%*.")
    )


def _uri(rng: random.Random, style: str) -> list[Part]:
    scheme, port, path = rng.choice(
        (
            ("postgresql", 5432, "/app"),
            ("postgres", 5432, "/orders?sslmode=require"),
            ("mysql", 3306, "/shop"),
            ("mongodb+srv", None, "/test?retryWrites=true&w=majority"),
            ("redis", 6379, "/0"),
            ("amqp", 5672, "/vhost"),
            ("https", None, "/simple/"),
        )
    )
    host = rng.choice(HOSTS) if port else f"{word(rng)}.{rs(rng, LO + DIG, 5)}.example.net"
    hp = f"{host}:{port}" if port else host
    pw = (
        rs(rng, ALNUM, rng.randint(12, 28))
        if rng.random() < 0.8
        else _password(rng).replace("#", "%23")
    )
    return [
        f"{scheme}://{rng.choice((*USERS, 'app', 'ci', 'deploy'))}:",
        S(pw, "uri-credentials"),
        f"@{hp}{path}",
    ]


def _auth_header(rng: random.Random, style: str) -> list[Part]:
    r = rng.random()
    if r < 0.6:
        return ["Bearer ", S(rs(rng, ALNUM + "-._~", rng.randint(32, 64)), "authorization-header")]
    if r < 0.85:
        cred = f"{rng.choice(USERS)}:{_password(rng)}".encode()
        return ["Basic ", S(b64(cred), "authorization-header")]
    return ["token ", S(rs(rng, HEX, 40), "authorization-header")]


def _cookie(rng: random.Random, style: str) -> list[Part]:
    if style == "set-cookie" or rng.random() < 0.4:
        name = rng.choice(("session", "sessionid", "_app_session", "connect.sid", "JSESSIONID"))
        return [
            f"{name}=",
            S(rs(rng, B64URL, rng.randint(32, 48)), "cookie-header"),
            "; Path=/; HttpOnly; Secure; SameSite=Lax",
        ]
    return [
        "sessionid=",
        S(rs(rng, LO + DIG, 32), "cookie-header"),
        "; csrftoken=",
        S(rs(rng, ALNUM, 32), "cookie-header"),
    ]


def _generic(rng: random.Random, style: str) -> list[Part]:
    return [S(_password(rng), "generic-assignment")]


@dataclass(frozen=True)
class Spec:
    name: str
    make: Maker
    env: tuple[str, ...] = ()
    yaml: tuple[str, ...] = ()
    json: tuple[str, ...] = ()
    log: tuple[str, ...] = ()  # templates with one "{}"

    def styles(self) -> list[str]:
        return [s for s in ("env", "yaml", "json", "log") if getattr(self, s)]


LOG = "{ts} INFO  [{svc}] "
SPECS: tuple[Spec, ...] = (
    Spec(
        "aws-access-key",
        _aws_access,
        env=("AWS_ACCESS_KEY_ID",),
        yaml=("aws_access_key_id", "accessKeyId"),
        json=("AccessKeyId",),
        log=(
            LOG + "using AWS credentials {} from environment",
            "Found credentials: {}",
            "An error occurred (InvalidClientTokenId): The security token included in the request "
            "is invalid. key={}",
        ),
    ),
    Spec(
        "aws-secret-key",
        _aws_secret,
        env=("AWS_SECRET_ACCESS_KEY",),
        yaml=("aws_secret_access_key", "secretAccessKey"),
        json=("SecretAccessKey",),
        log=("aws_secret_access_key = {}",),
    ),
    Spec(
        "gcp-service-account",
        _gcp_sa,
        env=("GOOGLE_CREDENTIALS",),
        log=("$ cat $GOOGLE_APPLICATION_CREDENTIALS\n{}",),
    ),
    Spec(
        "gcp-api-key",
        _gcp_api,
        env=("GOOGLE_API_KEY", "FIREBASE_API_KEY"),
        yaml=("apiKey",),
        json=("api_key",),
        log=(
            LOG + "GET https://maps.googleapis.com/maps/api/geocode/json?address=Berlin&key={} 200",
        ),
    ),
    Spec(
        "azure-storage-key",
        _azure_key,
        env=("AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY"),
        yaml=("azurestorageaccountkey", "accountKey"),
        json=("value",),
        log=("az storage blob upload --account-name artifacts --account-key {} -f dist.tgz",),
    ),
    Spec(
        "azure-connection-string",
        _azure_conn,
        env=("AZURE_STORAGE_CONNECTION_STRING", "SERVICEBUS_CONNECTION"),
        yaml=("connectionString",),
        json=("connectionString",),
        log=(LOG + "connecting to {}",),
    ),
    Spec(
        "github-token",
        _github,
        env=("GITHUB_TOKEN", "GH_TOKEN"),
        yaml=("github_token",),
        json=("token",),
        log=(
            "git remote set-url origin https://x-access-token:{}@github.com/acme/shop.git",
            LOG + "authenticated to GitHub with {}",
        ),
    ),
    Spec(
        "gitlab-token",
        _gitlab,
        env=("GITLAB_TOKEN", "CI_DEPLOY_TOKEN"),
        yaml=("gitlab_token",),
        json=("token",),
        log=(
            'curl --header "PRIVATE-TOKEN: {}" https://gitlab.example.com/api/v4/projects',
            LOG + "registered runner with token {}",
        ),
    ),
    Spec(
        "slack-token",
        _slack_token,
        env=("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"),
        yaml=("slack_token",),
        json=("bot_token",),
        log=(LOG + "posting release notes with {}",),
    ),
    Spec(
        "slack-webhook",
        _slack_webhook,
        env=("SLACK_WEBHOOK_URL",),
        yaml=("webhook_url", "url"),
        json=("webhook",),
        log=("curl -X POST -d @payload.json {}",),
    ),
    Spec(
        "stripe-key",
        _stripe,
        env=("STRIPE_SECRET_KEY", "STRIPE_API_KEY"),
        yaml=("stripe_key",),
        json=("stripe_secret",),
        log=(LOG + "stripe client initialised ({})",),
    ),
    Spec(
        "twilio-key",
        _twilio,
        env=("TWILIO_API_KEY",),
        yaml=("twilio_api_key",),
        json=("sid",),
        log=(LOG + "twilio: sending SMS via api key {}",),
    ),
    Spec(
        "sendgrid-key",
        _sendgrid,
        env=("SENDGRID_API_KEY",),
        yaml=("sendgrid_api_key",),
        json=("apiKey",),
        log=(LOG + "mailer configured: sendgrid {}",),
    ),
    Spec(
        "mailgun-key",
        _mailgun,
        env=("MAILGUN_API_KEY",),
        yaml=("mailgun_key",),
        json=("mailgun",),
        log=("curl -s --user 'api:{}' https://api.mailgun.net/v3/mg.example.com/messages",),
    ),
    Spec(
        "datadog-key",
        _datadog,
        env=("DD_API_KEY", "DATADOG_API_KEY"),
        yaml=("api_key",),
        json=("DD-API-KEY",),
        log=("datadog-ci: using DD_API_KEY={}",),
    ),
    Spec(
        "npm-token",
        _npm,
        env=("NPM_TOKEN", "NODE_AUTH_TOKEN"),
        yaml=("npmAuthToken",),
        json=("npm_token",),
        log=("//registry.npmjs.org/:_authToken={}",),
    ),
    Spec(
        "pypi-token",
        _pypi,
        env=("TWINE_PASSWORD", "UV_PUBLISH_TOKEN", "PYPI_TOKEN"),
        yaml=("pypi_token",),
        json=("password",),
        log=("password = {}", "twine upload -u __token__ -p {} dist/*"),
    ),
    Spec(
        "dockerhub-token",
        _dockerhub,
        env=("DOCKERHUB_TOKEN", "DOCKER_PASSWORD"),
        yaml=("dockerhub_token",),
        json=("auth_token",),
        log=("docker login -u acmebot -p {} docker.io",),
    ),
    Spec(
        "openai-key",
        _openai,
        env=("OPENAI_API_KEY",),
        yaml=("openai_api_key",),
        json=("openai_key",),
        log=(LOG + "llm client ready (key {})",),
    ),
    Spec(
        "anthropic-key",
        _anthropic,
        env=("ANTHROPIC_API_KEY",),
        yaml=("anthropic_api_key",),
        json=("anthropic_key",),
        log=(LOG + "llm client ready (key {})",),
    ),
    Spec(
        "jwt",
        _jwt,
        env=("CI_JOB_JWT", "ID_TOKEN"),
        yaml=("idToken",),
        json=("id_token", "access_token"),
        log=(LOG + "session refreshed: {}", LOG + "oidc token issued {} for job"),
    ),
    Spec(
        "private-key",
        _private_key,
        yaml=("tls.key", "ssh_private_key"),
        log=("$ cat deploy_key\n{}",),
    ),
    Spec(
        "uri-credentials",
        _uri,
        env=("DATABASE_URL", "REDIS_URL", "PIP_INDEX_URL"),
        yaml=("url", "dsn"),
        json=("database_url",),
        log=(LOG + "connecting to {}", "psql {} -c 'select 1'"),
    ),
    Spec(
        "authorization-header",
        _auth_header,
        yaml=("Authorization",),
        json=("Authorization",),
        log=(
            "> Authorization: {}",
            "curl -sSf -H 'Authorization: {}' https://api.internal/v2/deploy",
        ),
    ),
    Spec("cookie-header", _cookie, json=("Cookie",), log=("> Cookie: {}", "< Set-Cookie: {}")),
    Spec(
        "generic-assignment",
        _generic,
        env=(
            "DB_PASSWORD",
            "POSTGRES_PASSWORD",
            "REDIS_PASSWORD",
            "SECRET_KEY",
            "DJANGO_SECRET_KEY",
            "JWT_SECRET",
            "API_KEY",
            "APP_SECRET",
            "CLIENT_SECRET",
            "AUTH_TOKEN",
            "SESSION_SECRET",
            "ADMIN_PASSWORD",
            "ENCRYPTION_KEY",
        ),
        yaml=(
            "password",
            "db_password",
            "client_secret",
            "api_key",
            "secret_key",
            "auth_token",
            "apiToken",
            "secret",
        ),
        json=("password", "client_secret", "apiKey", "secret", "token", "api_token"),
        log=(
            "mysql -h db -u root --password={} shop < dump.sql",
            LOG + "login password={} accepted",
            "export API_TOKEN={}",
            './configure --db-password "{}"',
        ),
    ),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}
DETECTORS = tuple(s.name for s in SPECS)
#: Planted classes that have a provider-documented format (everything but the keyword class).
KNOWN_FORMAT = tuple(d for d in DETECTORS if d != "generic-assignment")


# --------------------------------------------------------------------------- hard negatives
PLACEHOLDERS = (
    "${DB_PASSWORD}",
    "changeme",
    "********",
    "***",
    "<redacted>",
    "true",
    "false",
    "null",
    "{{ .Values.db.password }}",
    "$(POSTGRES_PASSWORD)",
    "REPLACE_ME",
    "xxx",
    "none",
    "${{ secrets.NPM_TOKEN }}",
    "<your-token-here>",
    "%(password)s",
    "example",
    "${SECRET_KEY:-}",
    "CHANGE_ME",
    "redacted",
)


def akia_lookalike(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return "AK" + "IA" + rs(rng, UPDIG, rng.choice((10, 12, 14, 15)))  # too short
    if r < 0.8:
        return "AK" + "IA" + rs(rng, LO + DIG, 16)  # lowercase body
    return "ak" + "ia" + rs(rng, UPDIG, 16)  # lowercase prefix


def negative(rng: random.Random, kind: str | None = None) -> N:
    kind = kind or rng.choice(
        (
            "uuid",
            "sha1",
            "sha256",
            "git-sha",
            "request-id",
            "version",
            "akia-lookalike",
            "md5",
            "image-digest",
        )
    )
    if kind == "uuid":
        return N(uid(rng), kind)
    if kind == "sha1":
        return N(sha1(rng), kind)
    if kind == "sha256":
        return N(sha256(rng), kind)
    if kind == "git-sha":
        return N(rs(rng, HEX, rng.choice((7, 8, 12, 40))), kind)
    if kind == "request-id":
        return N(
            rng.choice((rs(rng, HEX, 16), rs(rng, HEX, 32), "req_" + rs(rng, HEX, 24), uid(rng))),
            kind,
        )
    if kind == "version":
        return N(version(rng), kind)
    if kind == "akia-lookalike":
        return N(akia_lookalike(rng), kind)
    if kind == "md5":
        return N(rs(rng, HEX, 32), kind)
    if kind == "image-digest":
        return N("sha256:" + sha256(rng), kind)
    raise ValueError(kind)


# --------------------------------------------------------------------------- builder
@dataclass
class Builder:
    rng: random.Random
    plant: bool
    dense: bool
    parts: list[str] = field(default_factory=list)
    pos: int = 0
    secrets: list[Label] = field(default_factory=list)
    negatives: list[Label] = field(default_factory=list)
    docs: list[tuple[int, int, str]] = field(default_factory=list)
    kind: str = ""
    _order: list[str] = field(default_factory=list)

    def add(self, *parts: Part, style: str = "") -> None:
        for p in parts:
            text = p if isinstance(p, str) else p.text
            if isinstance(p, S):
                self.secrets.append(
                    Label(self.pos, self.pos + len(text), p.det, f"{self.kind}/{style or '-'}")
                )
            elif isinstance(p, N):
                self.negatives.append(
                    Label(self.pos, self.pos + len(text), p.kind, f"{self.kind}/{style or '-'}")
                )
            self.parts.append(text)
            self.pos += len(text)

    # secrets are planted in detector round-robin order so that every detector gets
    # about the same number of samples whatever the document mix
    def next_spec(self, style: str) -> Spec:
        for _ in range(2 * len(SPECS)):
            if not self._order:
                self._order = list(DETECTORS)
                self.rng.shuffle(self._order)
            name = self._order.pop()
            spec = SPEC_BY_NAME[name]
            if style in spec.styles():
                return spec
            self._order.insert(0, name)
        return SPEC_BY_NAME["generic-assignment"]

    def should_plant(self, typical: float, dense: float) -> bool:
        return self.plant and self.rng.random() < (dense if self.dense else typical)


def _quote_yaml(rng: random.Random, parts: list[Part]) -> list[Part]:
    text = "".join(p if isinstance(p, str) else p.text for p in parts)
    if any(c in text for c in ":#{}[]&*!%@`'\"") or text[:1] in "-?|>" or rng.random() < 0.3:
        return ['"', *parts, '"']
    return parts


def plant_env(b: Builder) -> None:
    spec = b.next_spec("env")
    b.add(b.rng.choice(spec.env) + "=", *spec.make(b.rng, "env"), "\n", style="env")


def plant_yaml(b: Builder, indent: str) -> None:
    spec = b.next_spec("yaml")
    parts = spec.make(b.rng, "yaml")
    if spec.name != "private-key":
        parts = _quote_yaml(b.rng, parts)
    b.add(indent + b.rng.choice(spec.yaml) + ": ", *parts, "\n", style="yaml")


def json_secret(b: Builder) -> tuple[str, list[Part]]:
    spec = b.next_spec("json")
    return b.rng.choice(spec.json), spec.make(b.rng, "json")


def plant_log(b: Builder) -> None:
    spec = b.next_spec("log")
    tpl = b.rng.choice(spec.log)
    pre, post = tpl.split("{}")
    pre = pre.replace("{ts}", ts(b.rng)).replace("{svc}", b.rng.choice(SERVICES))
    style = "set-cookie" if "Set-Cookie" in pre else "log"
    b.add(pre, *spec.make(b.rng, style), post + "\n", style="log")


# --------------------------------------------------------------------------- documents
def section(b: Builder, cmd: str) -> None:
    r = b.rng.random()
    if r < 0.4:
        b.add(f"##[group]Run {cmd}\n")
    elif r < 0.7:
        b.add(
            f"section_start:{b.rng.randint(1715000000, 1716000000)}:step_{b.rng.randint(1, 30)}"
            f"\r\x1b[0K$ {cmd}\n"
        )
    else:
        b.add(f"$ {cmd}\n")


KEYWORD_BENIGN_YAML = (
    ("password", None),
    ("db_password", None),
    ("token", None),
    ("secret", None),
    ("api_key", None),
    ("password_min_length", "12"),
    ("token_ttl", "3600"),
    ("secret_name", "db-credentials"),
    ("passwordless", "true"),
    ("token_endpoint", "https://auth.example.com/oauth/token"),
    ("secretStore", "vault"),
    ("tokenizer", "bpe"),
    ("rotate_secrets", "false"),
    ("password_changed_at", "2024-03-01T10:00:00Z"),
    ("secret_version", "7"),
    ("use_token_auth", "yes"),
    ("passwordPolicy", "strong"),
    ("keyRef", "ci/deploy-key"),
    ("token_type", "Bearer"),
)
KEYWORD_BENIGN_ENV = (
    ("DB_PASSWORD", None),
    ("POSTGRES_PASSWORD", None),
    ("API_TOKEN", None),
    ("SECRET_KEY", None),
    ("NPM_TOKEN", None),
    ("AWS_SECRET_ACCESS_KEY", None),
    ("GITHUB_TOKEN", None),
    ("PASSWORD_MIN_LENGTH", "12"),
    ("TOKEN_TTL", "3600"),
    ("SECRET_STORE", "vault"),
    ("PASSWORD_HASHER", "argon2"),
    ("TOKEN_URL", "https://auth.example.com/oauth/token"),
    ("VAULT_SECRET_PATH", "secret/data/ci/shop"),
    ("SECRETS_MANAGER_REGION", "eu-west-1"),
    ("CI_JOB_TOKEN_SCOPE", "project"),
    ("GIT_ASKPASS", "/usr/local/bin/askpass"),
)


def keyword_yaml(b: Builder, indent: str) -> None:
    key, value = b.rng.choice(KEYWORD_BENIGN_YAML)
    if value is None:
        v = b.rng.choice(PLACEHOLDERS)
        q = '"' if any(c in v for c in "{}$*<>%:") or b.rng.random() < 0.3 else ""
        b.add(f"{indent}{key}: {q}", N(v, "placeholder"), f"{q}\n")
    else:
        b.add(f"{indent}{key}: ", N(value, "keyword-value"), "\n")


def keyword_env(b: Builder) -> None:
    key, value = b.rng.choice(KEYWORD_BENIGN_ENV)
    if value is None:
        b.add(f"{key}=", N(b.rng.choice(PLACEHOLDERS), "placeholder"), "\n")
    else:
        b.add(f"{key}=", N(value, "keyword-value"), "\n")


def keyword_log(b: Builder) -> None:
    rng = b.rng
    t = ts(rng)
    r = rng.random()
    if r < 0.2:
        b.add(f"{t} INFO  [auth] password reset email queued for user_id={rng.randint(1, 99999)}\n")
    elif r < 0.4:
        b.add(
            f"{t} DEBUG [auth] token refreshed (expires_in=3600, token_type=Bearer) for client ",
            N(uid(rng), "uuid"),
            "\n",
        )
    elif r < 0.55:
        b.add(
            f"{t} INFO  [vault] secret rotation scheduled for secret/ci/{word(rng)} version ",
            N(str(rng.randint(1, 40)), "keyword-value"),
            "\n",
        )
    elif r < 0.7:
        b.add(f'{t} WARN  [db] password authentication failed for user "{rng.choice(USERS)}"\n')
    elif r < 0.85:
        b.add(
            f"{t} INFO  [config] password=",
            N(rng.choice(("********", "***", "<redacted>", "[hidden]")), "placeholder"),
            " token=",
            N(rng.choice(PLACEHOLDERS), "placeholder"),
            "\n",
        )
    else:
        b.add(
            f"{t} DEBUG [http] header Authorization: ",
            N("<redacted>", "placeholder"),
            " cookie: ",
            N("<redacted>", "placeholder"),
            "\n",
        )


def doc_env(b: Builder) -> None:
    rng = b.rng
    section(b, rng.choice(("env | sort", "printenv", "export -p | cut -c12-")))
    lines: list[list[Part]] = [
        ["CI=", "true"],
        ["HOME=", "/home/runner"],
        ["HOSTNAME=", f"runner-{rs(rng, LO + DIG, 8)}-project-{rng.randint(1, 9999)}"],
        [
            "PATH=",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/home/runner/.local/bin",
        ],
        ["LANG=", "C.UTF-8"],
        ["TERM=", "xterm"],
        ["SHLVL=", "1"],
        ["PWD=", f"/builds/acme/{word(rng)}"],
        ["CI_COMMIT_SHA=", N(sha1(rng), "git-sha")],
        ["CI_COMMIT_SHORT_SHA=", N(rs(rng, HEX, 8), "git-sha")],
        ["CI_PIPELINE_ID=", str(rng.randint(10**6, 10**8))],
        ["CI_JOB_ID=", str(rng.randint(10**6, 10**9))],
        [
            "CI_COMMIT_REF_NAME=",
            rng.choice(("main", "develop", f"feature/{word(rng)}-{rng.randint(1, 999)}")),
        ],
        ["CI_PROJECT_PATH=", f"acme/{word(rng)}"],
        ["CI_RUNNER_ID=", str(rng.randint(1, 99999))],
        ["GITHUB_RUN_ID=", str(rng.randint(10**9, 10**10))],
        ["GITHUB_SHA=", N(sha1(rng), "git-sha")],
        ["GITHUB_REPOSITORY=", f"acme/{word(rng)}"],
        ["RUNNER_OS=", "Linux"],
        ["RUNNER_ARCH=", "X64"],
        ["JAVA_HOME=", "/usr/lib/jvm/java-17-openjdk-amd64"],
        ["NODE_VERSION=", N(version(rng), "version")],
        ["PYTHON_VERSION=", N(version(rng), "version")],
        ["GOPATH=", "/go"],
        ["DEBIAN_FRONTEND=", "noninteractive"],
        ["BUILD_ID=", N(uid(rng), "uuid")],
        ["IMAGE_DIGEST=", N("sha256:" + sha256(rng), "image-digest")],
        ["CACHE_KEY=", f"deps-{rs(rng, HEX, 64)}"],
        ["DEPLOY_ENV=", rng.choice(("staging", "production"))],
    ]
    for i, line in enumerate(lines):
        if rng.random() < 0.3 and i > 2:
            continue
        b.add(*line, "\n")
        if rng.random() < (0.25 if b.dense else 0.03):
            keyword_env(b)
        if b.should_plant(0.04, 0.12):
            plant_env(b)
    if rng.random() < 0.3:
        b.add("AWS_PROFILE_HINT=", N(akia_lookalike(rng), "akia-lookalike"), "\n")


def doc_yaml(b: Builder) -> None:
    rng = b.rng
    kind = rng.choice(("Deployment", "ConfigMap", "ConfigMap", "Secret", "Deployment"))
    name = f"{rng.choice(SERVICES)}-{word(rng)}"
    section(
        b, f"kubectl get {kind.lower()} {name} -n {rng.choice(('prod', 'staging', 'ci'))} -o yaml"
    )
    b.add(
        "apiVersion: ",
        "apps/v1" if kind == "Deployment" else "v1",
        f"\nkind: {kind}\nmetadata:\n  annotations:\n",
    )
    if kind == "Deployment":
        b.add(f'    deployment.kubernetes.io/revision: "{rng.randint(1, 90)}"\n')
    last = json.dumps(
        {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "prod"}},
        separators=(",", ":"),
    )
    b.add(f"    kubectl.kubernetes.io/last-applied-configuration: |\n      {last}\n")
    b.add("    checksum/config: ", N(sha256(rng), "sha256"), "\n")
    if b.dense:
        for _ in range(rng.randint(1, 3)):
            keyword_yaml(b, "    ")
    b.add(f'  creationTimestamp: "{ts(rng)[:19]}Z"\n  labels:\n    app: {name}\n')
    b.add("    app.kubernetes.io/version: ", N(version(rng), "version"), "\n")
    b.add(
        f"  name: {name}\n  namespace: prod\n"
        f'  resourceVersion: "{rng.randint(10**6, 10**9)}"\n  uid: ',
        N(uid(rng), "uuid"),
        "\n",
    )
    if kind == "ConfigMap":
        b.add("data:\n")
        for _ in range(rng.randint(3, 10)):
            suffix = rng.choice(("url", "timeout", "enabled", "level", "replicas", "region"))
            k = f"{word(rng)}.{suffix}"
            b.add(f'  {k}: "{rng.choice((*CONFIG_VALUES, str(rng.randint(1, 100))))}"\n')
            if b.dense and rng.random() < 0.5:
                keyword_yaml(b, "  ")
            if b.should_plant(0.05, 0.15):
                plant_yaml(b, "  ")
        if rng.random() < 0.5:
            b.add("binaryData:\n")
            for _ in range(rng.randint(1, 3)):
                blob = b64(rng.randbytes(rng.choice((100, 257, 600, 1500, 3000))))
                b.add(f"  {word(rng)}.bin: ", N(blob, "base64-blob"), "\n")
            if rng.random() < 0.5:
                cfg = json.dumps(
                    {"service": word(rng), "replicas": rng.randint(1, 9), "features": [word(rng)]}
                )
                b.add("  settings.json: ", N(b64(cfg.encode()), "base64-json"), "\n")
    elif kind == "Secret":
        # kubectl shows Secret data base64-encoded; values planted here are real secrets
        b.add("data:\n")
        b.add("  username: ", N(b64(rng.choice(USERS).encode()), "base64-blob"), "\n")
        if b.plant and rng.random() < 0.7:
            pw = _password(rng)
            b.secrets.append(
                Label(
                    b.pos + len("  password: "),
                    b.pos + len("  password: ") + len(b64(pw.encode())),
                    "generic-assignment",
                    "yaml/k8s-secret-b64",
                )
            )
            b.add("  password: ", b64(pw.encode()), "\n")
        else:  # no password key: a Secret's password, even "changeme", is rightly masked
            b.add("  host: ", N(b64(rng.choice(HOSTS).encode()), "base64-blob"), "\n")
        if b.plant and rng.random() < 0.4:
            pem = "".join(p if isinstance(p, str) else p.text for p in _private_key(rng, "log"))
            enc = b64(pem.encode())
            b.secrets.append(
                Label(
                    b.pos + len("  tls.key: "),
                    b.pos + len("  tls.key: ") + len(enc),
                    "private-key",
                    "yaml/k8s-secret-b64",
                )
            )
            b.add("  tls.key: ", enc, "\n")
        b.add("type: Opaque\n")
    else:
        b.add(
            "spec:\n  replicas: 3\n  selector:\n    matchLabels:\n      app: ",
            name,
            "\n  template:\n    spec:\n",
        )
        b.add(
            "      containers:\n      - name: ",
            name,
            "\n        image: registry.example.com/acme/",
            name,
            "@",
            N("sha256:" + sha256(rng), "image-digest"),
            "\n        env:\n",
        )
        for _ in range(rng.randint(2, 6)):
            r = rng.random()
            if r < 0.4:
                b.add(
                    f"        - name: {rng.choice(('LOG_LEVEL', 'PORT', 'REGION', 'WORKERS'))}\n"
                    '          value: "',
                    rng.choice(("info", "8080", "eu-west-1", "4")),
                    '"\n',
                )
            elif r < 0.7 or b.dense:
                key = rng.choice(("DB_PASSWORD", "API_TOKEN", "SECRET_KEY", "REDIS_PASSWORD"))
                b.add(
                    f"        - name: {key}\n          valueFrom:\n            secretKeyRef:\n"
                    f"              key: {key.lower().split('_')[-1]}\n              name: ",
                    N(f"{name}-secrets", "keyword-value"),
                    "\n",
                )
            else:
                b.add("        - name: GIT_SHA\n          value: ", N(sha1(rng), "git-sha"), "\n")
            if b.should_plant(0.04, 0.10):
                spec = b.next_spec("yaml")
                if spec.name == "private-key":
                    spec = SPEC_BY_NAME["generic-assignment"]
                env = (spec.env or ("API_KEY",))[0]
                parts = _quote_yaml(rng, spec.make(rng, "yaml"))
                if parts[0] != '"':
                    parts = ['"', *parts, '"']
                b.add(f"        - name: {env}\n          value: ", *parts, "\n", style="k8s-env")
        b.add(
            "status:\n  availableReplicas: 3\n  observedGeneration: ", str(rng.randint(1, 99)), "\n"
        )
    if b.dense:
        b.add(
            "---\n# application.yml\nspring:\n  datasource:\n    url: jdbc:postgresql://db:5432/app\n"
        )
        for _ in range(rng.randint(4, 10)):
            keyword_yaml(b, "    ")
            if b.should_plant(0.0, 0.25):
                plant_yaml(b, "    ")


def _json_value(b: Builder, v: object, indent: str | None, level: int) -> None:
    nl = "" if indent is None else "\n"
    pad = "" if indent is None else indent * (level + 1)
    end = "" if indent is None else indent * level
    sep = ", " if indent is None else ","
    if isinstance(v, dict):
        if not v:
            b.add("{}")
            return
        b.add("{" + nl)
        for i, (k, val) in enumerate(v.items()):
            b.add(pad + json.dumps(k) + ": ")
            _json_value(b, val, indent, level + 1)
            b.add((sep if i < len(v) - 1 else "") + nl)
        b.add(end + "}")
    elif isinstance(v, list):
        if not v:
            b.add("[]")
            return
        b.add("[" + nl)
        for i, val in enumerate(v):
            b.add(pad)
            _json_value(b, val, indent, level + 1)
            b.add((sep if i < len(v) - 1 else "") + nl)
        b.add(end + "]")
    elif isinstance(v, N):
        b.add('"', v, '"')
    elif isinstance(v, tuple):  # planted: a list of parts making up one string value
        b.add('"', *v, '"', style="json")
    else:
        b.add(json.dumps(v))


def doc_json(b: Builder) -> None:
    rng = b.rng
    svc = rng.choice(SERVICES)
    section(b, f"curl -s https://{svc}.internal/api/v1/{word(rng)}s?limit=20 | jq .")
    items = []
    for _ in range(rng.randint(1, 6)):
        attrs: dict[str, object] = {
            "name": f"{word(rng)}-{rng.randint(1, 999)}",
            "status": rng.choice(("active", "pending", "failed", "succeeded")),
            "created_at": ts(rng),
            "updated_at": ts(rng),
            "version": N(version(rng), "version"),
            "commit": N(sha1(rng), "git-sha"),
            "duration_ms": rng.randint(1, 90000),
            "tags": [word(rng) for _ in range(rng.randint(0, 3))],
            "owner": {
                "id": N(uid(rng), "uuid"),
                "login": rng.choice(USERS),
                "url": f"https://git.example.com/{rng.choice(USERS)}",
            },
        }
        if rng.random() < 0.3:
            attrs["checksum"] = N("sha256:" + sha256(rng), "image-digest")
        if rng.random() < 0.2:
            attrs["etag"] = N(rs(rng, HEX, 32), "md5")
        if b.dense:
            for key in rng.sample(
                ("password", "token", "secret", "api_key", "has_password", "token_expires_in"), 2
            ):
                val = (
                    rng.choice(PLACEHOLDERS)
                    if not key.startswith(("has_", "token_e"))
                    else rng.choice(("true", "3600"))
                )
                attrs[key] = N(val, "placeholder")
        if b.should_plant(0.10, 0.30):
            k, parts = json_secret(b)
            attrs[k] = tuple(parts)
        items.append(
            {
                "id": N(uid(rng), "uuid"),
                "type": word(rng),
                "attributes": attrs,
                "links": {
                    "self": f"https://{svc}.internal/api/v1/{word(rng)}s/{rng.randint(1, 10**6)}"
                },
            }
        )
    doc = {
        "data": items,
        "meta": {
            "request_id": N("req_" + rs(rng, HEX, 24), "request-id"),
            "page": rng.randint(1, 20),
            "total": rng.randint(20, 5000),
        },
    }
    _json_value(b, doc, "  " if rng.random() < 0.8 else None, 0)
    b.add("\n")


PSQL_TABLES = {
    "deployments": ("id", "service", "version", "sha", "deployed_at", "status"),
    "users": ("id", "username", "email_verified", "created_at", "password_changed_at", "is_admin"),
    "jobs": ("id", "pipeline_id", "name", "duration", "runner", "finished_at"),
    "api_clients": ("id", "name", "client_id", "client_secret", "created_at"),
    "settings": ("key", "value", "updated_by"),
}


def _psql_cell(b: Builder, table: str, col: str, row: int) -> Part:
    rng = b.rng
    if col == "id":
        return str(row + 1)
    if col in ("sha",):
        return N(rs(rng, HEX, 40), "git-sha")
    if col == "version":
        return N(version(rng), "version")
    if col in ("deployed_at", "created_at", "password_changed_at", "finished_at"):
        return ts(rng)[:19].replace("T", " ") + "+00"
    if col == "client_id":
        return N(uid(rng), "uuid")
    if col == "client_secret":
        if b.plant and rng.random() < (0.5 if b.dense else 0.3):
            return S(rs(rng, ALNUM, 40), "generic-assignment")
        return N(rng.choice(("********", "", "<rotated>")), "placeholder")
    if col == "value":
        return rng.choice(("true", "30", "eu-west-1", "info", "https://cdn.example.com", "false"))
    if col == "key":
        return rng.choice(
            (
                "feature.checkout_v2",
                "session.ttl",
                "token.lifetime",
                "password.min_length",
                "region",
            )
        )
    if col == "duration":
        return f"{rng.randint(1, 3600)}s"
    if col in ("is_admin", "email_verified"):
        return rng.choice(("t", "f"))
    if col == "pipeline_id":
        return str(rng.randint(10**6, 10**7))
    return f"{word(rng)}-{rng.randint(1, 99)}" if col != "username" else rng.choice(USERS)


def doc_psql(b: Builder) -> None:
    rng = b.rng
    table = rng.choice(tuple(PSQL_TABLES) + (("api_clients", "settings") if b.dense else ()))
    cols = PSQL_TABLES[table]
    section(
        b, f"psql \"$DATABASE_URL\" -c 'select {', '.join(cols)} from {table} order by 1 limit 30'"
    )
    n = rng.randint(1, 30)
    rows = [[_psql_cell(b, table, c, i) for c in cols] for i in range(n)]
    texts = [[c if isinstance(c, str) else c.text for c in r] for r in rows]
    numeric = [all(t[j].isdigit() for t in texts) for j in range(len(cols))]
    widths = [max([len(cols[j])] + [len(t[j]) for t in texts]) for j in range(len(cols))]
    head = []
    for j, c in enumerate(cols):
        left = (widths[j] - len(c)) // 2
        head.append(" " * left + c + " " * (widths[j] - len(c) - left))
    b.add(" " + " | ".join(head).rstrip() + "\n")
    b.add("-" + "-+-".join("-" * w for w in widths) + "-\n")
    for r, t in zip(rows, texts, strict=True):
        out: list[Part] = [" "]
        for j, cell in enumerate(r):
            padn = widths[j] - len(t[j])
            if numeric[j]:
                out += [" " * padn, cell]
            else:
                out += [cell, " " * padn if j < len(cols) - 1 else ""]
            if j < len(cols) - 1:
                out.append(" | ")
        b.add(*out, "\n", style="psql-column")
    b.add(f"({n} row{'s' if n != 1 else ''})\n\n")


def doc_log(b: Builder) -> None:
    rng = b.rng
    section(
        b,
        rng.choice(
            ("pytest -q", "npm test", "./gradlew test", "go test ./...", "make integration")
        ),
    )
    for _ in range(rng.randint(10, 60)):
        t = ts(rng)
        r = rng.random()
        if r < 0.45:
            b.add(
                f"{t} INFO  [{rng.choice(SERVICES)}] request_id=",
                negative(rng, "request-id"),
                f" method={rng.choice(('GET', 'POST', 'PUT'))}"
                f" path=/api/v1/{word(rng)}s/{rng.randint(1, 9999)}"
                f" status={rng.choice((200, 200, 201, 204, 404, 500))}"
                f" duration={rng.random() * 200:.1f}ms\n",
            )
        elif r < 0.55:
            b.add(
                f"{t} DEBUG [cache] hit key=",
                negative(rng, rng.choice(("sha256", "md5", "uuid"))),
                "\n",
            )
        elif r < 0.62:
            b.add(
                f"{t} INFO  [deploy] rolled out ",
                rng.choice(SERVICES),
                " ",
                N(version(rng), "version"),
                " (",
                N(rs(rng, HEX, 12), "git-sha"),
                ")\n",
            )
        elif r < 0.67:
            b.add(
                f"{t} WARN  [lint] test fixture uses fake key id ",
                N(akia_lookalike(rng), "akia-lookalike"),
                "\n",
            )
        elif r < 0.72:
            _stack_trace(b, t)
        elif r < 0.78:
            _curl_trace(b)
        elif r < 0.83 and b.dense:
            keyword_log(b)
        else:
            b.add(
                f"{t} INFO  [{rng.choice(SERVICES)}] {word(rng)} job {rng.randint(1, 10**6)} "
                f"completed in {rng.randint(1, 5000)}ms\n"
            )
        if b.dense and rng.random() < 0.15:
            keyword_log(b)
        if b.should_plant(0.02, 0.05):
            plant_log(b)


def _stack_trace(b: Builder, t: str) -> None:
    rng = b.rng
    if rng.random() < 0.5:
        b.add(f"{t} ERROR [worker] unhandled exception\nTraceback (most recent call last):\n")
        for _ in range(rng.randint(2, 6)):
            b.add(
                f'  File "/app/{word(rng)}/{word(rng)}.py", '
                f"line {rng.randint(1, 900)}, in {word(rng)}\n"
                f"    result = self.{word(rng)}(payload)\n"
            )
        b.add(f"{rng.choice(('KeyError', 'ValueError', 'TimeoutError'))}: '{word(rng)}'\n")
    else:
        b.add(f"{t} ERROR [main] java.lang.IllegalStateException: {word(rng)} not ready\n")
        for _ in range(rng.randint(3, 10)):
            b.add(
                f"\tat com.acme.{word(rng)}.{word(rng).capitalize()}Service.{word(rng)}"
                f"({word(rng).capitalize()}Service.java:{rng.randint(10, 900)})\n"
            )


def _curl_trace(b: Builder) -> None:
    rng = b.rng
    b.add(
        f"> GET /v2/{word(rng)}/manifests/latest HTTP/1.1\n> Host: registry.example.com\n"
        f"> User-Agent: curl/{version(rng)}\n> Accept: */*\n"
    )
    if b.should_plant(0.3, 0.5):
        spec = SPEC_BY_NAME[rng.choice(("authorization-header", "cookie-header"))]
        b.add(
            "> Authorization: " if spec.name == "authorization-header" else "> Cookie: ",
            *spec.make(rng, "log"),
            "\n",
            style="curl",
        )
    b.add(
        "> \n< HTTP/1.1 200 OK\n< Content-Type: application/json\n< Docker-Content-Digest: ",
        N("sha256:" + sha256(rng), "image-digest"),
        "\n< X-Request-Id: ",
        N(uid(rng), "request-id"),
        f"\n< Content-Length: {rng.randint(100, 9000)}\n<\n",
    )


def doc_git(b: Builder) -> None:
    rng = b.rng
    if rng.random() < 0.5:
        section(b, "git log --oneline -20")
        for _ in range(rng.randint(5, 20)):
            b.add(
                N(rs(rng, HEX, rng.choice((7, 8, 10))), "git-sha"),
                f" {rng.choice(('Fix', 'Add', 'Bump', 'Revert'))} {word(rng)} {word(rng)}\n",
            )
        return
    section(b, "git log -5")
    for _ in range(rng.randint(1, 5)):
        u = rng.choice(USERS)
        b.add(
            "commit ",
            N(sha1(rng), "git-sha"),
            f"\nAuthor: {u.capitalize()} <{u}@example.com>\n"
            f"Date:   Tue May {rng.randint(1, 28)} {rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:00 2024 +0200\n\n"
            f"    {rng.choice(('Fix', 'Add', 'Update'))} {word(rng)} handling in {word(rng)}\n",
        )
        if rng.random() < 0.3:
            b.add(
                "    \n    Reviewed-on: https://git.example.com/acme/shop/pull/",
                str(rng.randint(1, 9000)),
                "\n    Change-Id: I",
                N(sha1(rng), "sha1"),
                "\n",
            )
        b.add("\n")


def doc_build(b: Builder) -> None:
    rng = b.rng
    r = rng.random()
    if r < 0.4:
        section(b, "docker build -t app .")
        n = rng.randint(5, 14)
        for i in range(1, n + 1):
            b.add(
                f"Step {i}/{n} : RUN {rng.choice(('pip install .', 'npm ci', 'apt-get update'))}\n"
                " ---> Running in ",
                N(rs(rng, HEX, 12), "git-sha"),
                "\n ---> ",
                N(rs(rng, HEX, 12), "git-sha"),
                "\n",
            )
        b.add(
            "Successfully built ",
            N(rs(rng, HEX, 12), "git-sha"),
            "\nwriting image ",
            N("sha256:" + sha256(rng), "image-digest"),
            " done\n",
        )
    elif r < 0.7:
        section(b, "npm ci --loglevel=http")
        for _ in range(rng.randint(3, 15)):
            b.add(
                "npm http fetch GET 200 https://registry.npmjs.org/"
                f"{word(rng)}/-/{word(rng)}-{version(rng)}.tgz "
                f"{rng.randint(5, 900)}ms (cache miss)\n"
            )
            if rng.random() < 0.3:
                b.add("npm sill integrity sha512-", N(b64(rng.randbytes(64)), "base64-blob"), "\n")
        b.add(f"added {rng.randint(100, 2000)} packages in {rng.randint(5, 90)}s\n")
    else:
        section(b, "pip install --require-hashes -r requirements.txt")
        for _ in range(rng.randint(3, 15)):
            pkg = f"{word(rng)}-{word(rng)}"
            b.add(
                f"Collecting {pkg}=={version(rng)}\n"
                f"  Downloading {pkg}-{version(rng)}-py3-none-any.whl "
                f"({rng.randint(10, 900)} kB)\n"
            )
            if rng.random() < 0.5:
                b.add("    --hash=sha256:", N(sha256(rng), "sha256"), "\n")
        b.add(
            "Successfully installed ",
            " ".join(f"{word(rng)}-{version(rng)}" for _ in range(4)),
            "\n",
        )


DOCS_TYPICAL: tuple[tuple[Callable[[Builder], None], float], ...] = (
    (doc_log, 0.30),
    (doc_json, 0.18),
    (doc_psql, 0.14),
    (doc_yaml, 0.12),
    (doc_build, 0.12),
    (doc_git, 0.08),
    (doc_env, 0.06),
)
DOCS_DENSE: tuple[tuple[Callable[[Builder], None], float], ...] = (
    (doc_yaml, 0.28),
    (doc_env, 0.20),
    (doc_log, 0.20),
    (doc_json, 0.18),
    (doc_psql, 0.08),
    (doc_build, 0.03),
    (doc_git, 0.03),
)


def generate(
    variant: str = "typical", size_mb: float = 50, seed: int = 1, plant: bool = True
) -> Corpus:
    """Generate about ``size_mb`` MiB of CI output (whole documents; slightly more)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    rng = random.Random(f"{seed}/{variant}/{plant}")
    b = Builder(rng=rng, plant=plant, dense=variant == "keyword-dense")
    docs = DOCS_DENSE if b.dense else DOCS_TYPICAL
    funcs = [d for d, _ in docs]
    weights = [w for _, w in docs]
    target = int(size_mb * 1024 * 1024)
    while b.pos < target:
        fn = rng.choices(funcs, weights)[0]
        start = b.pos
        b.kind = fn.__name__.removeprefix("doc_")
        fn(b)
        b.docs.append((start, b.pos, b.kind))
    text = "".join(b.parts)
    data = text.encode("ascii")  # every generator emits ASCII, so character = byte offsets
    return Corpus(variant, seed, plant, data, b.secrets, b.negatives, b.docs)


def digest(c: Corpus) -> str:
    return hashlib.sha256(c.data).hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write a generated corpus and its labels")
    p.add_argument("--variant", choices=VARIANTS, default="typical")
    p.add_argument("--size-mb", type=float, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--benign", action="store_true", help="no planted secrets")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    c = generate(a.variant, a.size_mb, a.seed, plant=not a.benign)
    with open(a.out, "wb") as f:
        f.write(c.data)

    def rows(ls: Iterable[Label]) -> list[list[object]]:
        return [[x.start, x.end, x.detector, x.shape] for x in ls]

    with open(a.out + ".labels.json", "w") as f:
        json.dump({"secrets": rows(c.secrets), "negatives": rows(c.negatives)}, f)
    print(
        f"{len(c.data)} bytes, {len(c.secrets)} secrets, {len(c.negatives)} negatives, "
        f"sha256 {digest(c)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
