"""`pathwarden mask`: the masking engine as a stdin-to-stdout filter for CI logs,
and masking settings in the configuration file."""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest

from pathwarden.config import ConfigError, load_config
from pathwarden.masking.settings import MaskingSettings, mask_options

PATHWARDEN = [sys.executable, "-m", "pathwarden.cli.main"]
_rng = random.Random(5)
AWS_KEY_ID = "AKIA" + "".join(_rng.choice(string.ascii_uppercase + "234567") for _ in range(16))


def mask(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*PATHWARDEN, "mask", *args], input=stdin, capture_output=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_mask_filters_stdin_to_stdout_and_keeps_everything_else() -> None:
    log = (f"step 1: ok\nexport AWS_ACCESS_KEY_ID={AWS_KEY_ID}\n"
           "request 3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6 done\n").encode()
    proc = mask(stdin=log)
    assert proc.returncode == 0, proc.stderr
    assert AWS_KEY_ID.encode() not in proc.stdout
    assert proc.stdout == log.replace(AWS_KEY_ID.encode(), b"[MASKED:aws-access-key]")


def test_mask_check_fails_when_something_was_masked_and_stats_say_what() -> None:
    clean = mask("--check", stdin=b"nothing to see\n")
    assert clean.returncode == 0 and clean.stdout == b"nothing to see\n"
    dirty = mask("--check", "--stats", stdin=f"key {AWS_KEY_ID}\n".encode())
    assert dirty.returncode == 1
    assert b"aws-access-key: 1" in dirty.stderr
    assert AWS_KEY_ID.encode() not in dirty.stderr + dirty.stdout


def test_mask_reads_files_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("first\n")
    (tmp_path / "b.log").write_text(f"second {AWS_KEY_ID}\n")
    proc = mask(str(tmp_path / "a.log"), str(tmp_path / "b.log"))
    assert proc.stdout == b"first\nsecond [MASKED:aws-access-key]\n"
    missing = mask(str(tmp_path / "nope.log"))
    assert missing.returncode == 2 and b"nope.log" in missing.stderr


def test_mask_literal_from_the_environment_never_on_the_command_line() -> None:
    proc = mask("--literal-env", "MY_DEPLOY_PW", stdin=b"pw is s3cr3t-value!\n",
                env={"MY_DEPLOY_PW": "s3cr3t-value"})
    assert proc.stdout == b"pw is [MASKED:literal]!\n"
    unset = mask("--literal-env", "NOT_SET_ANYWHERE")
    assert unset.returncode == 2 and b"NOT_SET_ANYWHERE" in unset.stderr


def test_mask_rejects_unknown_detectors_and_styles() -> None:
    proc = mask("--disable", "no-such-detector")
    assert proc.returncode == 2
    assert b"no-such-detector" in proc.stderr and b"known detectors" in proc.stderr
    assert mask("--style", "sparkles").returncode == 2


def test_mask_uses_a_configuration_and_its_injected_credentials(tmp_path: Path) -> None:
    config = tmp_path / "pathwarden.yaml"
    config.write_text(
        "connections:\n"
        "  app:\n"
        "    {host: 127.0.0.1, database: app, user: app, password: {env: APP_PW}}\n"
        "masking:\n"
        "  style: fixed\n"
        "  fixed_text: '<hidden>'\n")
    proc = mask("--config", str(config), stdin=f"dsn pw=Injected-Pw-123 {AWS_KEY_ID}\n".encode(),
                env={"APP_PW": "Injected-Pw-123"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"dsn pw=<hidden> <hidden>\n"
    wrong = mask("--config", str(config), "--connection", "nope", env={"APP_PW": "x" * 8})
    assert wrong.returncode == 2 and b"nope" in wrong.stderr


def test_mask_streams_large_input_with_secrets_across_read_boundaries() -> None:
    filler = b"x" * (64 * 1024 - 10)  # the key straddles the first 64 KiB read
    data = (filler + f" {AWS_KEY_ID} \n".encode()) * 20
    proc = mask(stdin=data)
    assert proc.returncode == 0
    assert AWS_KEY_ID.encode() not in proc.stdout
    assert proc.stdout.count(b"[MASKED:aws-access-key]") == 20


# -- configuration ------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pathwarden.yaml"
    path.write_text(text)
    return path


def test_config_unknown_detector_names_file_line_and_field(tmp_path: Path) -> None:
    path = _config(tmp_path, "masking:\n  disable:\n    - jwt\n    - nonsense\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert f"{path}:4" in message and "masking.disable" in message and "nonsense" in message


def test_config_short_literal_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, "masking:\n  literals: ['abc']\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "at least 6 characters" in str(exc.value)


def test_config_policy_masking_block_is_validated(tmp_path: Path) -> None:
    path = _config(tmp_path, (
        "connections:\n  db: {host: h, database: d, user: u}\n"
        "identities:\n  ci: {}\n"
        "policies:\n"
        "  - name: p\n    identities: [ci]\n    connections: [db]\n    allow: [read]\n"
        "    masking:\n      pii: [shoe-size]\n"))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert "policies[0].masking" in message or "policies.0.masking" in message
    assert "shoe-size" in message


def test_settings_merge_scalars_override_and_lists_add_up() -> None:
    top = MaskingSettings.model_validate({"style": "keep-last-4", "columns": ["pin"],
                                          "disable": ["jwt"]})
    conn = MaskingSettings.model_validate({"pii": ["email"], "columns": ["ssn"]})
    policy = MaskingSettings.model_validate({"style": "fixed", "exempt_columns": ["token_id"]})
    options = mask_options([top, conn, None, policy], injected=["short", "long-enough-pw"])
    assert options.style == "fixed"
    assert options.sensitive_keys == {"pin", "ssn"}
    assert options.disabled == {"jwt"} and options.pii == {"email"}
    assert options.exempt_keys == {"token_id"}
    # Injected credentials are always masked, except ones too short to be safe to match.
    assert options.literals == {"long-enough-pw"}
    # A level that does not mention a scalar keeps the one above.
    assert mask_options([top, conn]).style == "keep-last-4"
