"""Secrets from the environment never reach structured outputs or logs."""

from __future__ import annotations

import io
import json
import logging

import pytest

from mixtune.secrets import MASK, RedactingFilter, install_log_redaction, is_secret_name, redact, redact_text

WANDB = "0123456789abcdef0123456789abcdef01234567"
HF = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", WANDB)
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "hunter2-long")
    monkeypatch.setenv("SHORT_TOKEN", "1")  # too short to mask inside text


@pytest.mark.parametrize("name", ["WANDB_API_KEY", "HF_TOKEN", "hub_token", "GITHUB_TOKEN", "aws_secret_access_key",
                                  "db_password", "client-secret", "OPENAI_API_KEY", "api_key", "token",
                                  "HUGGING_FACE_HUB_TOKEN"])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["pad_token", "eos_token", "tokenizer", "max_new_tokens", "bos_token",
                                  "additional_special_tokens", "learning_rate", "name_or_path", "monkey",
                                  "num_tokens", "keys", "token_count"])
def test_not_secret_names(name: str) -> None:
    assert not is_secret_name(name)


def test_redact_structures(secret_env: None) -> None:
    run = {
        "recipe": {"logging": {"wandb": {"project": "p", "api_key": WANDB}},
                   "model": {"tokenizer": {"pad_token": "[PAD]"}, "hub_token": HF}},
        "env": {"WANDB_API_KEY": WANDB, "HF_TOKEN": HF, "PATH": "/usr/bin", "SHORT_TOKEN": "1"},
        "command": ["mixtune", "train", f"--token={HF}"],
        "notes": (f"login with {WANDB} failed", 3, None, True),
        "git_commit": "0123456789abcdef0123456789abcdef0123456",  # 39 hex chars: not an env value
        "steps": 12,
    }
    out = redact(run)
    text = json.dumps(out)
    assert WANDB not in text and HF not in text and "hunter2" not in text
    assert out["recipe"]["logging"]["wandb"] == {"project": "p", "api_key": MASK}
    assert out["recipe"]["model"]["tokenizer"] == {"pad_token": "[PAD]"}
    assert out["env"]["PATH"] == "/usr/bin" and out["env"]["HF_TOKEN"] == MASK
    assert out["env"]["SHORT_TOKEN"] == MASK  # masked by key name, even when short
    assert out["command"] == ["mixtune", "train", f"--token={MASK}"]
    assert out["notes"] == (f"login with {MASK} failed", 3, None, True)
    assert out["git_commit"] == run["git_commit"] and out["steps"] == 12
    assert run["env"]["HF_TOKEN"] == HF  # the input is not modified


def test_redact_text_leaves_ordinary_text(secret_env: None) -> None:
    assert redact_text("step 1 of 10, loss 1.0") == "step 1 of 10, loss 1.0"
    assert redact_text(f"x{HF}y") == f"x{MASK}y"
    # a hub-token-shaped string is masked even when it is not in the environment
    assert redact_text("hf_" + "Z" * 34) == MASK


def test_logging_filter_masks_messages_args_and_tracebacks(secret_env: None) -> None:
    stream = io.StringIO()
    logger = logging.getLogger("mixtune.test_secrets")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    filt = install_log_redaction(logger)
    assert install_log_redaction(logger) is filt and handler.filters.count(filt) == 1
    try:
        logger.info("token is %s and key %s", HF, WANDB)
        logger.warning(f"inline {WANDB}")
        try:
            raise RuntimeError(f"auth failed for {HF}")
        except RuntimeError:
            logger.exception("upload failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert HF not in text and WANDB not in text
    assert text.count(MASK) >= 4
    assert "RuntimeError: auth failed for ***" in text


def test_filter_on_root_handler_covers_child_loggers(secret_env: None) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        install_log_redaction()
        logging.getLogger("somelibrary.module").info("using token %s", HF)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    assert HF not in stream.getvalue() and MASK in stream.getvalue()
    assert any(isinstance(f, RedactingFilter) for f in handler.filters)


@pytest.mark.parametrize("value", ["Question", "Rewriting", "offline", "true"])
def test_a_plain_word_as_a_secret_value_leaves_text_alone(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Before: OPENAI_API_KEY=Question rewrote metrics and reports to '*** Rewriting'."""
    monkeypatch.setenv("OPENAI_API_KEY", value)
    text = "Question Rewriting: Questions, rewriting offline = true"
    assert redact_text(text) == text
    assert redact({"category": "Question Rewriting", "OPENAI_API_KEY": value}) == {
        "category": "Question Rewriting", "OPENAI_API_KEY": MASK}  # still masked under its own key


def test_short_secret_values_match_whole_tokens_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PASSWORD", "s3cret-pw")  # 9 characters, not a plain word
    assert redact_text("login s3cret-pw, url=https://u:s3cret-pw@host") == "login ***, url=https://u:***@host"
    assert redact_text("xs3cret-pwy and s3cret-pw2") == "xs3cret-pwy and s3cret-pw2"


@pytest.mark.parametrize("token", ["sk-proj-abcdefghijklmnopqrstuvwxyz012345", "ghp_" + "a1" * 18,
                                   "AKIAIOSFODNN7EXAMPLE", "xoxb-1234567890-abcdefghij"])
def test_known_token_shapes_are_masked_without_an_environment_variable(token: str) -> None:
    assert redact_text(f"key {token} leaked") == f"key {MASK} leaked"


def test_console_log_is_redacted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`mixtune` sets up console logging with the redacting filter (before: only train.log was filtered)."""
    from mixtune.cli import main

    monkeypatch.setenv("WANDB_API_KEY", WANDB)
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        for handler in before:
            root.removeHandler(handler)
        capsys.readouterr()
        main(["recipe", "check", "/nonexistent.yaml"])
        logging.getLogger("mixtune.test").warning("the key is %s", WANDB)
        err = capsys.readouterr().err
        assert f"the key is {MASK}" in err and WANDB not in err
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before:
            root.addHandler(handler)
