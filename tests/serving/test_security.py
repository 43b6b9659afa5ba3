"""API keys: where they come from, how they are compared, and what a refusal says."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from features import telemetry
from serving.duplicates import KeepBody, consent_given_twice, needs_a_look
from serving.runtime import ServiceConfigError, ServiceSettings, read_api_keys
from serving.security import GuardMiddleware, KeyCheck, authorized, presented_keys

KEY = "k3y-0123456789-abcdef"
OTHER = "another-key-0123456789"


def test_keys_come_from_the_variable_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{OTHER}\n\n  third-key-0123456789  \n", "utf-8")
    keys = read_api_keys({"FUNNELCAST_API_KEY": f"{KEY}, ", "FUNNELCAST_API_KEY_FILE": str(path)})
    assert keys == (KEY, OTHER, "third-key-0123456789")


def test_comments_and_blank_lines_in_the_key_file_are_not_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# keys for the CRM, rotated 2026-12\n\n{KEY}\n  # old: {OTHER}\n", "utf-8")
    keys = read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)})
    assert keys == (KEY,)
    assert not KeyCheck(keys).accepts("# keys for the CRM, rotated 2026-12")
    path.write_text("# only a comment\n\n", "utf-8")
    # the file is named: "set FUNNELCAST_API_KEY" sent a user who had given one elsewhere
    with pytest.raises(ServiceConfigError, match=f"the API key file {path} holds no key"):
        read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)})
    with pytest.raises(ServiceConfigError, match="no API key is configured"):
        read_api_keys({})


def test_a_key_no_header_can_carry_is_refused_naming_its_line_not_the_key(
    tmp_path: Path,
) -> None:
    secret = "clé-secrète-0123456789abcdef"
    path = tmp_path / "keys"
    path.write_text(f"# comment\n{KEY}\n{secret}\n", "utf-8")
    with pytest.raises(ServiceConfigError, match="line 3 of") as caught:
        read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)})
    assert "ASCII" in str(caught.value)
    assert secret not in str(caught.value)
    with pytest.raises(ServiceConfigError, match="key 2 of FUNNELCAST_API_KEY") as caught:
        read_api_keys({"FUNNELCAST_API_KEY": f"{KEY},{secret}"})
    assert secret not in str(caught.value)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (f"{KEY}   # added 2026-12", "holds a space \\(a comment after the key\\?\\)"),
        (f'"{KEY}"', "is in quotes, which would be part of the key"),
        (f"'{KEY}'", "is in quotes, which would be part of the key"),
    ],
)
def test_a_key_no_client_would_send_is_refused_naming_its_line(
    tmp_path: Path, line: str, words: str
) -> None:
    """A comment after the key, or quotes kept by Docker's --env-file or an editor, became
    part of the key: the server started and the real key was a 401 (deploy review)."""
    path = tmp_path / "keys"
    path.write_text(f"{OTHER}\n{line}\n", "utf-8")
    with pytest.raises(ServiceConfigError, match=f"the key on line 2 of .* {words}") as caught:
        read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)})
    assert KEY not in str(caught.value)
    with pytest.raises(ServiceConfigError, match=f"key 1 of FUNNELCAST_API_KEY {words}"):
        read_api_keys({"FUNNELCAST_API_KEY": line})


def test_a_key_file_named_in_the_key_variable_is_refused(tmp_path: Path) -> None:
    """A secret mounted as a file (/run/secrets/...) put in FUNNELCAST_API_KEY: its path was
    the key, and the real one a 401 (deploy review)."""
    path = tmp_path / "funnelcast_api_key"
    path.write_text(f"{KEY}\n", "utf-8")
    with pytest.raises(ServiceConfigError, match="FUNNELCAST_API_KEY names a file") as caught:
        read_api_keys({"FUNNELCAST_API_KEY": str(path)})
    assert "FUNNELCAST_API_KEY_FILE" in str(caught.value)
    assert read_api_keys({"FUNNELCAST_API_KEY": "x" * 300}) == ("x" * 300,)  # no such file


def test_a_relative_key_file_that_cannot_be_read_names_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Bento's workers run in its src/ folder: a relative key file that exists where the
    user stands was 'No such file or directory', the path not shown (deploy review)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ServiceConfigError, match="relative path is read from the working folder"):
        read_api_keys({"FUNNELCAST_API_KEY_FILE": "keys/api"})
    with pytest.raises(ServiceConfigError) as caught:
        read_api_keys({"FUNNELCAST_API_KEY_FILE": str(tmp_path / "keys" / "api")})
    assert "relative path" not in str(caught.value)


def test_a_key_file_that_is_not_utf8_text_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes(b"\xff\xfe" + KEY.encode("utf-16-le"))
    with pytest.raises(ServiceConfigError, match="not UTF-8"):
        read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)})


@pytest.mark.parametrize("ending", ["", "\r\n"])
def test_a_key_file_in_utf16_without_a_byte_order_mark_is_named_as_such(
    tmp_path: Path, ending: str
) -> None:
    """Without a byte-order mark, UTF-16 reads as UTF-8 with a NUL after every character: the
    service started and answered every request 401, and with a line break at the end the
    refusal was of keys too short (privacy review)."""
    path = tmp_path / "keys"
    path.write_bytes(f"{KEY}{ending}".encode("utf-16-le"))
    with pytest.raises(ServiceConfigError, match="NUL bytes: it is UTF-16 text") as said:
        read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)})
    assert KEY not in str(said.value)


@pytest.mark.parametrize("control", ["\x01", "\x1b", "\x7f", "\x00", "\x0c", "\x0b", "\x1e"])
def test_a_key_with_a_control_character_is_refused_naming_it_not_the_key(
    tmp_path: Path, control: str
) -> None:
    """No HTTP header carries a control character, so such a key could never match."""
    path = tmp_path / "keys"
    # inside the key: one at its end is stripped as the line's blank space (and \x0c, \x0b
    # and \x1e ended a line for str.splitlines: the key became two halves nobody holds)
    path.write_bytes(f"{OTHER}\n{KEY[:20]}{control}{KEY[20:]}\n".encode())
    code = f"U\\+{ord(control):04X}"
    refusal = "NUL bytes" if control == "\x00" else rf"line 2 of .* control character \({code}\)"
    with pytest.raises(ServiceConfigError, match=refusal) as said:
        read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)})
    assert KEY not in str(said.value)
    if control != "\x00":
        with pytest.raises(ServiceConfigError, match=rf"key 2 of FUNNELCAST_API_KEY .*{code}"):
            read_api_keys({"FUNNELCAST_API_KEY": f"{OTHER},{KEY[:20]}{control}{KEY[20:]}"})


def test_a_key_file_that_starts_with_a_byte_order_mark_reads_its_key(tmp_path: Path) -> None:
    """Review: a key file saved with a UTF-8 byte-order mark (Windows editors) was refused for
    "characters outside ASCII", which the file, seen in an editor, did not hold. One elsewhere
    than the start is refused naming it."""
    path = tmp_path / "keys"
    path.write_bytes(f"\ufeff{KEY}\n{OTHER}\n".encode())
    assert read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)}) == (KEY, OTHER)
    path.write_bytes(f"{KEY}\n\ufeff{OTHER}\n".encode())
    with pytest.raises(ServiceConfigError, match=r"line 2 of .* byte-order mark \(U\+FEFF") as said:
        read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)})
    assert OTHER not in str(said.value)


@pytest.mark.parametrize(
    "line",
    [
        f"FUNNELCAST_API_KEY={KEY}",
        f'export FUNNELCAST_API_KEY="{KEY}"',
        f"API_KEY = {KEY}",
    ],
)
def test_a_key_file_line_written_as_an_assignment_is_refused_not_taken_as_a_key(
    tmp_path: Path, line: str
) -> None:
    """Review: `FUNNELCAST_API_KEY=key-...` in the file was the key, one no client holds."""
    path = tmp_path / "keys"
    path.write_text(f"# the CRM's key\n{line}\n", "utf-8")
    with pytest.raises(
        ServiceConfigError, match=f"line 2 of {path} reads as an assignment"
    ) as said:
        read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)})
    assert "write the key without the name and '='" in str(said.value)
    assert KEY not in str(said.value)


def test_a_base64_key_with_its_padding_is_a_key_not_an_assignment(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    padded = ["ZnVubmVsY2FzdGtleTAxMjM0NQ==", "ZnVubmVsY2FzdGtleTAxMjM0NTY="]
    path.write_text("\n".join(padded) + "\n", "utf-8")
    assert read_api_keys({"FUNNELCAST_API_KEY_FILE": str(path)}) == tuple(padded)


def test_a_key_file_others_can_read_is_warned_about_once_as_a_worker_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review: a key file readable by the group or by everyone was served from without a
    word. The worker's key guard says so in one line, naming the file, never a key."""
    from serving.runtime import exposed_key_file
    from serving.service import _Guard

    path = tmp_path / "keys"
    path.write_text(f"{KEY}\n", "utf-8")
    env = {"FUNNELCAST_API_KEY_FILE": str(path)}
    path.chmod(0o600)
    assert exposed_key_file(env) is None
    for mode in (0o640, 0o604):
        path.chmod(mode)
        assert exposed_key_file(env) == (
            f"the API key file {path} can be read by other users (mode {mode:04o}); make it "
            f"readable by the service's user only: chmod 600 {path}"
        )
    monkeypatch.delenv("FUNNELCAST_API_KEY", raising=False)
    monkeypatch.setenv("FUNNELCAST_API_KEY_FILE", str(path))
    with caplog.at_level("WARNING", logger="funnelcast.service"):
        _Guard(lambda *args: None)
    said = [r.getMessage() for r in caplog.records if r.name == "funnelcast.service"]
    assert said == [exposed_key_file(env)]
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "no API key is configured"),
        ({"FUNNELCAST_API_KEY": " , "}, "no API key is configured"),
        ({"FUNNELCAST_API_KEY": "short"}, "shorter than 16"),
        ({"FUNNELCAST_API_KEY_FILE": "/no/such/file"}, "cannot be read"),
    ],
)
def test_no_usable_key_is_a_configuration_error(env: dict[str, str], words: str) -> None:
    with pytest.raises(ServiceConfigError, match=words):
        read_api_keys(env)


def test_a_key_given_as_the_key_file_is_not_repeated() -> None:
    """The key itself put in FUNNELCAST_API_KEY_FILE (or --api-key-file) was echoed in the
    error, so printed and, under `bentoml serve`, logged (privacy review)."""
    with pytest.raises(ServiceConfigError, match="cannot be read") as caught:
        read_api_keys({"FUNNELCAST_API_KEY_FILE": KEY})
    assert KEY not in str(caught.value)
    assert "a key itself goes in FUNNELCAST_API_KEY" in str(caught.value)


def _printed(code: str, env: dict[str, str]) -> list[str]:
    """What a fresh Python prints, as words: telemetry is decided once per process."""
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()


@pytest.mark.parametrize("preset", [None, "false", "", "1", "yes", "0", "Off"])
def test_importing_funnelcast_turns_usage_data_off_unless_the_user_decided(
    preset: str | None,
) -> None:
    """MLflow and BentoML send usage data to their makers by default (privacy review). A
    variable set but empty decides nothing, and BentoML read it, and "1" or "yes" (it takes
    "true" alone), as on (diff review)."""
    env = {k: v for k, v in os.environ.items() if k not in telemetry.SETTINGS}
    if preset is not None:
        env["BENTOML_DO_NOT_TRACK"] = env["MLFLOW_DISABLE_TELEMETRY"] = preset
    code = (
        "import os, serving.service\n"
        "from bentoml._internal.utils.analytics.usage_stats import do_not_track\n"
        "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], os.environ['BENTOML_DO_NOT_TRACK'],"
        " do_not_track())"
    )
    sent = preset is not None and preset.lower() in {"false", "0", "off"}
    expected = ["false", "false", "False"] if sent else ["true", "true", "True"]
    assert _printed(code, env) == expected


def test_bentomls_setting_read_before_funnelcast_is_read_again() -> None:
    """`bentoml serve` reads BENTOML_DO_NOT_TRACK once, before it imports the service, and
    keeps what it read: a plain `bentoml serve` of the service or of a Bento sent its serve
    and command events (deploy review)."""
    env = {k: v for k, v in os.environ.items() if k not in telemetry.SETTINGS}
    code = (
        "from bentoml._internal.utils.analytics.usage_stats import do_not_track\n"
        "before = do_not_track()\n"
        "import serving.service\n"
        "print(before, do_not_track())"
    )
    assert _printed(code, env) == ["False", "True"]  # on as BentoML read it; off after ours


def test_mlflow_imported_before_funnelcast_sends_no_usage_data_either() -> None:
    """MLflow makes its telemetry client when imported, so a notebook that imported MLflow
    first kept it on (diff review)."""
    # the variables by which MLflow turns its telemetry off itself (CI machines, pytest)
    ci_names = {
        "CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CIRCLECI", "GITLAB_CI", "JENKINS_URL",
        "TRAVIS", "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE",
        "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME",
        "RUNBOT_WORKER_ID", "DO_NOT_TRACK",
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in telemetry.SETTINGS and k not in ci_names}
    code = (
        "import mlflow\n"
        "from mlflow.telemetry import get_telemetry_client\n"
        "before = get_telemetry_client() is not None\n"
        "import training.tracking\n"
        "print(before, get_telemetry_client() is None)"
    )
    assert _printed(code, env) == ["True", "True"]  # on when imported alone; off after ours


def test_the_settings_never_show_their_keys(tmp_path: Path) -> None:
    """Settings get printed and logged (a startup line, a traceback's locals): the keys,
    given inline or in the key file, are not in their repr or str. (Mutation review:
    dropping repr=False from api_keys survived.)"""
    path = tmp_path / "keys"
    path.write_text(f"{OTHER}\n", "utf-8")
    settings = ServiceSettings.from_env(
        {"FUNNELCAST_API_KEY": KEY, "FUNNELCAST_API_KEY_FILE": str(path)}
    )
    assert settings.api_keys == (KEY, OTHER)  # read, so that their absence below means hidden
    for shown in (repr(settings), str(settings)):
        assert KEY not in shown
        assert OTHER not in shown
    assert "funnelcast" in repr(settings)  # the rest is still shown


def test_the_check_accepts_configured_keys_only() -> None:
    check = KeyCheck([KEY, OTHER])
    assert check.accepts(KEY)
    assert check.accepts(OTHER)
    for wrong in (None, "", KEY[:-1], KEY + "x", KEY.upper(), " " + KEY):
        assert not check.accepts(wrong)
    assert KEY not in repr(check)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", f"Bearer {KEY}".encode())], [KEY]),
        ([(b"Authorization", f"bearer   {KEY}  ".encode())], [KEY]),
        ([(b"x-api-key", KEY.encode())], [KEY]),
        ([(b"authorization", f"Basic {KEY}".encode())], []),
        ([(b"authorization", b"Bearer ")], []),
        ([], []),
    ],
)
def test_the_key_is_read_from_either_header(
    headers: list[tuple[bytes, bytes]], expected: list[str]
) -> None:
    assert presented_keys(headers) == expected


def test_an_empty_key_header_does_not_hide_a_valid_one() -> None:
    headers = [(b"x-api-key", b"  "), (b"authorization", f"Bearer {KEY}".encode())]
    assert presented_keys(headers) == [KEY]
    assert authorized(KeyCheck([KEY]), presented_keys(headers))


@pytest.mark.parametrize("wrong_first", [True, False])
@pytest.mark.parametrize(
    ("name", "prefix"),
    [(b"x-api-key", b""), (b"authorization", b"Bearer ")],
    ids=["x-api-key", "bearer"],
)
def test_a_wrong_key_beside_the_right_one_is_refused(
    name: bytes, prefix: bytes, wrong_first: bool
) -> None:
    """Every key a request presents must be valid: a client trying keys by sending many in
    one request must not get in because one of them is right. (Mutation review: letting in a
    request if any of its keys was valid survived.) Both orders, so neither the first nor the
    last header alone decides."""
    pair = [(name, prefix + b"wrong-key-0123456789"), (name, prefix + KEY.encode())]
    headers = pair if wrong_first else pair[::-1]
    assert sorted(presented_keys(headers)) == sorted(["wrong-key-0123456789", KEY])
    assert not authorized(KeyCheck([KEY]), presented_keys(headers))
    inner = _App()
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    sent = _call(GuardMiddleware(inner, keys=[KEY], max_body_bytes=1000), scope, [b"{}"])
    assert sent[0]["status"] == 401
    assert not inner.reached
    # the same header twice with the right key is let in: the refusal is for the wrong one
    right = [(name, prefix + KEY.encode())] * 2
    assert authorized(KeyCheck([KEY]), presented_keys(right))


class _App:
    """An ASGI app that records whether it was reached and reads the whole body."""

    def __init__(self) -> None:
        self.reached = False
        self.body = b""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.reached = True
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _call(app: Any, scope: dict, chunks: list[bytes]) -> list[dict]:
    sent: list[dict] = []
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _scope(*headers: tuple[bytes, bytes], kind: str = "http") -> dict:
    return {
        "type": kind,
        "method": "POST",
        "path": "/predict",
        "headers": [(b"authorization", f"Bearer {KEY}".encode()), *headers],
    }


def test_a_declared_length_does_not_let_a_chunked_body_past_the_limit() -> None:
    inner = _App()
    guard = GuardMiddleware(inner, keys=[KEY], max_body_bytes=1000)
    scope = _scope(
        (b"content-type", b"application/json"),
        (b"content-length", b"10"),
        (b"transfer-encoding", b"chunked"),
    )
    sent = _call(guard, scope, [b" " * 600, b" " * 600])
    assert sent[0]["status"] == 413
    assert not inner.reached
    small = _App()
    sent = _call(GuardMiddleware(small, keys=[KEY], max_body_bytes=1000), scope, [b"{}"])
    assert sent[0]["status"] == 200
    assert small.body == b"{}"


def test_only_json_bodies_and_http_reach_the_service() -> None:
    for media in (b"multipart/form-data; boundary=x", b"application/x-www-form-urlencoded"):
        inner = _App()
        sent = _call(
            GuardMiddleware(inner, keys=[KEY], max_body_bytes=1000),
            _scope((b"content-type", media)),
            [b"a=b"],
        )
        assert sent[0]["status"] == 415
        assert not inner.reached
    inner = _App()
    # a websocket is refused before its handshake: the server answers the upgrade with a 403
    assert _call(
        GuardMiddleware(inner, keys=[KEY], max_body_bytes=1000), _scope(kind="websocket"), []
    ) == [{"type": "websocket.close", "code": 1008}]
    assert not inner.reached


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "lots"])
def test_the_body_limit_must_be_a_positive_size(value: str) -> None:
    with pytest.raises(ServiceConfigError, match="FUNNELCAST_MAX_BODY_MB"):
        ServiceSettings.from_env({"FUNNELCAST_API_KEY": KEY, "FUNNELCAST_MAX_BODY_MB": value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TIMEOUT_S", "0"),
        ("TIMEOUT_S", "-1"),
        ("TIMEOUT_S", "abc"),
        ("TIMEOUT_S", "inf"),
        ("WORKERS", "0"),
        ("WORKERS", "1.5"),
        ("WORKERS", "two"),
    ],
)
def test_the_timeout_and_the_workers_must_be_positive(name: str, value: str) -> None:
    """Checked with the other settings, so `funnelcast serve` refuses them before it says it
    starts; BentoML took a timeout of -1 and stopped with a message about a lambda."""
    with pytest.raises(ServiceConfigError, match=f"FUNNELCAST_{name} must be a positive"):
        ServiceSettings.from_env({"FUNNELCAST_API_KEY": KEY, f"FUNNELCAST_{name}": value})
    given = ServiceSettings.from_env(
        {"FUNNELCAST_API_KEY": KEY, "FUNNELCAST_TIMEOUT_S": "2.5", "FUNNELCAST_WORKERS": "3"}
    )
    assert (given.timeout_s, given.workers) == (2.5, 3)
    assert (ServiceSettings.from_env({"FUNNELCAST_API_KEY": KEY}).timeout_s) == 10


class _Consent(_App):
    """Records what ``consent_given_twice`` says from inside the app, as the API methods ask."""

    def __init__(self, contacts: int, *, batch: bool) -> None:
        super().__init__()
        self.contacts, self.batch = contacts, batch
        self.twice: str | None = "never asked"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await super().__call__(scope, receive, send)
        self.looked = needs_a_look(self.contacts)
        self.twice = consent_given_twice(batch=self.batch) if self.looked else None


def test_the_kept_body_reaches_the_service_whole_and_answers_the_consent_check() -> None:
    once = b'{"marketing_consent": false, "events": []}'
    twice = b'{"marketing_consent": false, "events": [], "marketing_consent": true}'
    for body, expected in ((once, None), (twice, "marketing_consent")):
        inner = _Consent(1, batch=False)
        sent = _call(KeepBody(inner), _scope(), [body[:10], body[10:]])  # in two chunks
        assert sent[0]["status"] == 200
        assert inner.body == body
        assert inner.twice == expected
    batch = b'{"contacts": [' + once + b", " + once + b", " + twice + b"]}"
    inner = _Consent(3, batch=True)
    _call(KeepBody(inner), {**_scope(), "path": "/predict_batch"}, [batch])
    assert inner.twice == "contacts.2.marketing_consent"
    # outside a request nothing is kept: nothing to look at, no duplicate
    assert not needs_a_look(0)
    assert consent_given_twice(batch=False) is None


@pytest.mark.parametrize(
    ("escape", "looked"),
    [
        ("caf\\u00e9", False),  # an é, as json.dumps sends it: it cannot spell the name
        ("\\ud83d\\ude00", False),  # an emoji
        ("marketing\\u005Fconsent", True),  # "_", in capital hex: it could
        ("\\u006Darketing_consent", True),  # "m"
    ],
)
def test_only_an_escape_that_could_spell_the_name_costs_a_look(escape: str, looked: bool) -> None:
    """Review: any \\u escape cost a full parse of the body (3.7 s instead of 0.9 s for 5 MB),
    and Python's json.dumps escapes every non-ASCII character by default."""
    body = b'{"marketing_consent": true, "events": [], "contact_id": "%s"}' % escape.encode()
    inner = _Consent(1, batch=False)
    _call(KeepBody(inner), _scope(), [body])
    assert inner.looked is looked
    assert inner.twice is None


def test_every_post_body_is_kept_whatever_its_path() -> None:
    """Not the prediction paths by name: Starlette routes '/predict\\n' to /predict."""
    twice = b'{"marketing_consent": false, "marketing_consent": true}'
    for path in ("/predict", "/predict\n", "/predict_batch\n", "/api/predict"):
        kept = _Consent(1, batch=False)
        sent = _call(KeepBody(kept), {**_scope(), "path": path}, [twice])
        assert sent[0]["status"] == 200
        assert kept.body == twice
        assert kept.twice == "marketing_consent", path
    inner = _Consent(1, batch=False)
    _call(KeepBody(inner), {**_scope(), "method": "PUT"}, [twice])
    assert inner.body == twice
    assert not inner.looked  # not a POST: passed on untouched, nothing kept


def test_a_path_with_a_control_character_reaches_nothing() -> None:
    for path in ("/predict\n", "/predict_batch\r\n", "/readyz\t", "/pre\x00dict"):
        inner = _App()
        sent = _call(
            GuardMiddleware(inner, keys=[KEY], max_body_bytes=1000),
            {**_scope(), "path": path},
            [b"{}"],
        )
        assert sent[0]["status"] == 404
        assert not inner.reached
    inner = _App()
    _call(GuardMiddleware(inner, keys=[KEY], max_body_bytes=1000), _scope(), [b"{}"])
    assert inner.reached


@pytest.mark.parametrize("api_key_first", [True, False])
def test_with_both_headers_the_api_key_header_decides_in_either_order(
    api_key_first: bool,
) -> None:
    """Review: with a wrong Bearer key and a right X-API-Key the first header decided, so the
    same two keys were let in or refused by their order. X-API-Key now decides: a gateway may
    set an Authorization of its own."""

    def status(api_key: bytes, bearer: bytes) -> int:
        pair = [(b"x-api-key", api_key), (b"authorization", b"Bearer " + bearer)]
        headers = pair if api_key_first else pair[::-1]
        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
        guard = GuardMiddleware(_App(), keys=[KEY], max_body_bytes=1000)
        return int(_call(guard, scope, [b"{}"])[0]["status"])

    assert status(KEY.encode(), b"the-gateways-own-token") == 200
    assert status(b"not-the-key-at-all", KEY.encode()) == 401
    assert status(KEY.encode(), KEY.encode()) == 200
