"""Real servers: `bentoml serve` and `funnelcast serve` as subprocesses on 127.0.0.1, polled
until ready (no sleeps), called over HTTP and stopped by the test; a built Bento served with
no MLflow store at all."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import Served, contact_body

from serving.held import remove_unheld_folders
from serving.http_limits import MAX_HEAD_BYTES
from serving.metrics import SERVED_PATHS
from serving.runtime import ServiceSettings, load_scorer
from serving.schemas import ContactRequest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
FUNNELCAST = str(Path(sys.executable).with_name("funnelcast"))
READY_WITHIN_S = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _call(
    port: int, path: str, *, key: str | None = None, body: Any = None, timeout: float = 30
) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None
        if body is None
        else body
        if isinstance(body, bytes)
        else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {key}"} if key else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
            return response.status, json.loads(text) if text.strip() else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _websocket_status(port: int, path: str) -> int:
    """The HTTP status a websocket upgrade request gets (101 if it were accepted)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request.encode("ascii"))
        status_line = connection.makefile("rb").readline().decode("latin-1")
    return int(status_line.split()[1])


def _raw(port: int, request: bytes, answers: int = 1) -> list[tuple[int, bytes]]:
    """Send raw bytes (a request, or several back to back) on one connection; read ``answers``
    responses, or until the server closes it: each one's status and body."""
    out: list[tuple[int, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        with suppress(ConnectionResetError, BrokenPipeError):  # it may close before all is sent
            connection.sendall(request)
        stream = connection.makefile("rb")
        for _ in range(answers):
            status_line = stream.readline()
            if not status_line:
                break
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            out.append((int(status_line.split()[1]), stream.read(length)))
    return out


def _post(path: str, key: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n".encode()
        + extra
        + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return str(response.read().decode("utf-8"))


@contextmanager
def _server(
    command: list[str],
    env: dict[str, str],
    port: int,
    *,
    unset: tuple[str, ...] = (),
    output: list[str] | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """Start a server in its own process group, wait until /readyz answers 200 (or the process
    dies), check it listens on 127.0.0.1 only, and stop the whole group afterwards. Its output
    goes to a file: a pipe nobody reads would stall a server that logs more than it holds
    (appended to ``output`` once the server stopped, when given). ``unset``: variables of
    this process's environment the server does not get."""
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in unset} | env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            if process.poll() is not None:
                log.seek(0)
                output = log.read()
                pytest.fail(f"the server exited with {process.returncode}:\n{output[-3000:]}")
            try:
                if _call(port, "/readyz", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready within {READY_WITHIN_S} s")
            # poll, not sleep-and-hope: wait on the process for a moment between probes
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)
        assert _listening(process.pid, port) == {"127.0.0.1"}
        yield process
    finally:
        _stop(process)
        if output is not None:
            log.seek(0)
            output.append(log.read())
        log.close()


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    if process.stdout:
        process.stdout.close()


def _listening(pid: int, port: int) -> set[str]:
    """Addresses the server's process tree listens on for ``port``."""
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    addresses = set()
    for member in tree:
        try:
            for connection in member.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
                    addresses.add(connection.laddr.ip)
        except psutil.NoSuchProcess:
            continue
    return addresses


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_bentoml_serve_answers_like_the_service_class(
    served: Served, active_contacts: list[str]
) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:Funnelcast"]
    command += ["--port", str(port)]  # no --host: the service binds 127.0.0.1 by default
    body = contact_body(served, active_contacts[-4])
    scorer = load_scorer(ServiceSettings.from_env(served.env()))
    expected = scorer.predict([ContactRequest.model_validate(body)])[0]
    # the same contact as precomputed features, in the compact batch form
    features, _ = scorer.features_of(ContactRequest.model_validate(body), served.as_of)  # type: ignore[attr-defined]
    names = sorted(features)
    row = {"contact_id": "c", "as_of": body["as_of"], "values": [features[n] for n in names]}
    with _server(command, served.env(), port) as process:
        assert _listening(process.pid, port) == {"127.0.0.1"}
        status, answer = _call(port, "/predict", key=served.api_key, body=body)
        assert status == 200
        assert answer == json.loads(expected.model_dump_json())
        assert _call(port, "/predict", body=body)[0] == 401
        assert _call(port, "/metadata", key=served.api_key)[1]["model_version"] == "1"
        status, answer = _call(
            port,
            "/predict_batch",
            key=served.api_key,
            body={"contacts": [body, {**body, "marketing_consent": False}]},
        )
        assert status == 200
        assert [p["status"] for p in answer["predictions"]] == ["scored", "no_consent"]
        # consent given twice (no, then yes) is refused on both paths, whatever BentoML runs
        # them on (the event loop, a worker thread)
        assert body["marketing_consent"] is True  # last: what a parser alone would score
        twice = b'{"marketing_consent": false, ' + json.dumps(body)[1:].encode()
        status, answer = _call(port, "/predict", key=served.api_key, body=twice)
        assert (status, answer["field"]) == (400, "marketing_consent")
        batch = b'{"contacts": [' + json.dumps(body).encode() + b", " + twice + b"]}"
        status, answer = _call(port, "/predict_batch", key=served.api_key, body=batch)
        assert (status, answer["field"]) == (400, "contacts.1.marketing_consent")
        compact = {
            "feature_names": names,
            "contacts": [{**row, "marketing_consent": c} for c in (False, True)],
        }
        status, answer = _call(port, "/predict_batch", key=served.api_key, body=compact)
        assert status == 200
        unscored, scored = answer["predictions"]
        assert unscored["status"] == "no_consent"
        assert (scored["stage"], scored["probabilities"], scored["reasons"]) == (
            expected.stage,
            expected.probabilities.model_dump(),  # type: ignore[union-attr]
            expected.reasons,
        )
        twice = b'{"marketing_consent": false, ' + json.dumps(row)[1:].encode()
        twice = twice[:-1] + b', "marketing_consent": true}'
        batch = b'{"feature_names": ' + json.dumps(names).encode()
        batch += b', "contacts": [' + twice + b"]}"
        status, answer = _call(port, "/predict_batch", key=served.api_key, body=batch)
        assert (status, answer["field"]) == (400, "contacts.0.marketing_consent")
        # made-up paths (refused for want of a key) are counted as one `other` label, not
        # each as a label of its own: anyone could otherwise grow /metrics without end
        made_up = [f"/made-up-{n:03d}" for n in range(40)]
        for path in made_up:
            assert _call(port, path)[0] == 401
        assert _call(port, "/predict/", key=served.api_key)[0] == 404
        for n in range(3):  # websocket upgrades: none is served, refused, and not counted
            assert _websocket_status(port, f"/ws-made-up-{n}") == 403
        # a request's head is capped (64 KiB): a 1 MiB header, sent without a key, is a 431
        # at once (unchecked, httptools joined it in quadratic time: 64 MB held the worker 5 s)
        head = b"GET /nope HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n"
        [(status, refusal)] = _raw(port, head)
        assert status == 431
        assert json.loads(refusal)["limit_bytes"] == MAX_HEAD_BYTES
        assert _call(port, "/readyz")[0] == 200
        # so are a chunked body's trailers (httptools joins them as slowly)
        trailer = b"0\r\nX-Trailer: " + b"t" * 2**20 + b"\r\n\r\n"
        chunked = f"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {served.api_key}\r\n"
        chunked += "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        [(status, _)] = _raw(port, chunked.encode() + trailer)
        assert status == 431
        # while a large chunked body of small chunks is served, its framing past 64 KiB
        data = json.dumps({"contacts": [{**body, "marketing_consent": False}] * 40}).encode()
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(data[i : i + 64]), data[i : i + 64])
            for i in range(0, len(data), 64)
        )
        assert len(framed) - len(data) > MAX_HEAD_BYTES
        batch_head = chunked.replace("/predict ", "/predict_batch ").encode()
        [(status, answer)] = _raw(port, batch_head + framed + b"0\r\n\r\n")
        assert status == 200, answer
        assert {p["status"] for p in json.loads(answer)["predictions"]} == {"no_consent"}
        # a long header below the cap is served; so are requests sent back to back, a large
        # batch's body and the next request's head arriving together
        padding = b"X-Pad: " + b"p" * 30_000 + b"\r\n"
        small = json.dumps({**body, "marketing_consent": False}).encode()
        large = json.dumps({"contacts": [{**body, "marketing_consent": False}] * 200}).encode()
        assert len(large) > 4 * MAX_HEAD_BYTES
        answers = _raw(
            port,
            _post("/predict_batch", served.api_key, large)
            + _post("/predict", served.api_key, small, padding)
            + _post("/predict_batch", served.api_key, large),
            answers=3,
        )
        assert [status for status, _ in answers] == [200, 200, 200]
        assert json.loads(answers[1][1])["status"] == "no_consent"
        metrics = _text(port, "/metrics")
        labels = set(re.findall(r'endpoint="([^"]*)"', metrics))
        assert {"/predict", "/predict_batch", "/metadata", "other"} <= labels
        assert not any(label.startswith(("/made-up", "/ws-made-up")) for label in labels)
        assert labels <= SERVED_PATHS | {"other", "/static_content/"}
        refused = re.findall(
            r'^\w*request_total\{[^}]*endpoint="other"[^}]*http_response_code="401"[^}]*\} '
            r"(\S+)$",
            metrics,
            re.MULTILINE,
        )
        assert sum(float(count) for count in refused) >= len(made_up)
    assert process.returncode is not None
    assert _port_is_free(port)


def _count_of(port: int, endpoint: str) -> float:
    """The server's ``/metrics`` count of answered (200) requests to ``endpoint``."""
    counts = re.findall(
        r'^\w*request_total\{[^}]*endpoint="' + re.escape(endpoint) + r'"[^}]*'
        r'http_response_code="200"[^}]*\} (\S+)$',
        _text(port, "/metrics"),
        re.MULTILINE,
    )
    return sum(float(count) for count in counts)


def test_two_servers_on_one_bentoml_home_count_their_own_requests(
    served: Served, tmp_path: Path
) -> None:
    """BentoML keeps every server's Prometheus files in one folder of BENTOML_HOME and empties
    it as a server starts: the first server's /metrics then showed the second's counts, and
    none of its own from then on (README review). Each now has a folder of its own, removed
    when it stops."""
    home = tmp_path / "bentoml"
    env = served.env(BENTOML_HOME=str(home))
    serve = [sys.executable, "-m", "bentoml", "serve", "serving.service:Funnelcast", "--port"]
    first = _free_port()
    with _server([*serve, str(first)], env, first):
        for _ in range(3):
            assert _call(first, "/metadata", key=served.api_key)[0] == 200
        second = _free_port()
        with _server([*serve, str(second)], env, second):
            assert _call(second, "/metadata", key=served.api_key)[0] == 200
            assert _count_of(second, "/metadata") == 1
            assert len(_metrics_folders(home)) == 2
            # each held while its server runs, so neither start removed the other's
            assert remove_unheld_folders(home / "funnelcast-metrics") == []
        for _ in range(5):
            assert _call(first, "/metadata", key=served.api_key)[0] == 200
        assert _count_of(first, "/metadata") == 8
        assert len(_metrics_folders(home)) == 1
    assert not list((home / "funnelcast-metrics").iterdir())  # nor their lock files


def _metrics_folders(home: Path) -> list[Path]:
    folders = home / "funnelcast-metrics"
    return [entry for entry in folders.iterdir() if not entry.name.startswith(".")]


def test_a_built_bento_serves_without_the_registry(
    served: Served, active_contacts: list[str], tmp_path: Path
) -> None:
    home = {"BENTOML_HOME": str(tmp_path / "bentoml")}
    built = subprocess.run(
        [FUNNELCAST, "build", "--tracking-uri", served.store],
        cwd=ROOT,
        env={**os.environ, **served.env(), **home},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "Built Bento funnelcast:" in built.stdout
    assert "(version 1 of 'funnelcast' in the registry)" in " ".join(built.stdout.split())
    # the Bento's environment is the lock file's, every package pinned (not only the direct
    # dependencies, which let uvicorn and httpx float to versions never tested)
    [requirements] = (tmp_path / "bentoml" / "bentos").glob(
        "funnelcast/*/env/python/requirements.txt"
    )

    def pins(text: str) -> set[str]:  # name==version (BentoML rewrites the markers' quotes)
        return {line.split(";")[0].strip() for line in text.splitlines() if "==" in line}

    locked = pins((ROOT / "bento-requirements.txt").read_text("utf-8"))
    assert locked <= pins(requirements.read_text("utf-8"))
    assert any(pin.startswith("uvicorn==") for pin in locked)
    # a deployment sends no usage data to BentoML or MLflow
    [manifest] = (tmp_path / "bentoml" / "bentos").glob("funnelcast/*/bento.yaml")
    envs = {e["name"]: e["value"] for e in yaml.safe_load(manifest.read_text("utf-8"))["envs"]}
    assert envs["BENTOML_DO_NOT_TRACK"] == envs["MLFLOW_DISABLE_TELEMETRY"] == "true"
    port = _free_port()
    # the registry is gone: only the Bento's own copy of the model can be served
    env = {**home, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/nothing-here.db"}
    env["FUNNELCAST_API_KEY"] = served.api_key
    # the Bento's own model, named as its bentofile names it: served
    env["FUNNELCAST_BENTO_MODEL"] = "funnelcast:latest"
    body = contact_body(served, active_contacts[-5])
    command = [sys.executable, "-m", "bentoml", "serve", "funnelcast:latest", "--port", str(port)]
    # served as the README says, by a user who set no telemetry variable: BentoML read its
    # setting before it imported the service and sent its events (deploy review); with this
    # variable BentoML logs each event it would send instead of sending it
    env["__BENTOML_DEBUG_USAGE"] = "true"
    logged: list[str] = []
    with _server(command, env, port, unset=("BENTOML_DO_NOT_TRACK",), output=logged):
        meta = _call(port, "/metadata", key=served.api_key)[1]
        assert meta["source"].startswith("BentoML model funnelcast:")
        # the Bento's packaged contract is the one served (BentoML's own had no security
        # schemes and its generic error bodies: deploy review)
        [packaged] = (tmp_path / "bentoml" / "bentos").glob("funnelcast/*/apis/openapi.yaml")
        document = yaml.safe_load(packaged.read_text("utf-8"))
        assert document == _call(port, "/docs.json")[1]
        assert set(document["components"]["securitySchemes"]) == {"BearerKey", "HeaderKey"}
        assert meta["model_version"] == "1"
        assert meta["metrics"]["test.stage.lightgbm.macro_f1"] > 0
        status, answer = _call(port, "/predict", key=served.api_key, body=body)
        assert status == 200
        assert answer["model"] == "funnelcast"
        assert (answer["model_name"], answer["model_version"]) == ("funnelcast", "1")
    assert not (tmp_path / "nothing-here.db").exists()
    assert _port_is_free(port)
    assert "Starting production HTTP BentoServer" in logged[0]  # the log was read
    assert "Tracking Payload" not in logged[0]
    # another model named in the environment: the Bento serves only its own, so it stops
    # (it served the other: deploy review), and leaves no metrics folder (it left one)
    env["FUNNELCAST_BENTO_MODEL"] = "funnelcast:nosuchversion"
    status, output = _until_it_stops(
        [*command, "--port", str(_free_port())], cwd=tmp_path, env={**os.environ, **env}
    )
    said = " ".join(output.split())
    assert status == 2, said
    assert "FUNNELCAST_BENTO_MODEL names funnelcast:nosuchversion; unset" in said
    assert "Traceback" not in said
    assert not any((tmp_path / "bentoml" / "funnelcast-metrics").iterdir())


def _funnelcast(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FUNNELCAST, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_funnelcast_serve_checks_before_it_starts(served: Served, tmp_path: Path) -> None:
    empty_store = f"sqlite:///{tmp_path}/empty.db"
    no_key = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELCAST_API_KEY")}
    keyed = {**no_key, "FUNNELCAST_API_KEY": served.api_key}
    result = _funnelcast(["serve", "--tracking-uri", served.store], no_key)
    assert result.returncode == 2
    assert "no API key is configured" in result.stderr
    result = _funnelcast(["serve", "--tracking-uri", empty_store], keyed)
    assert result.returncode == 2
    assert "no model to serve" in result.stderr
    assert "--allow-rules-fallback" in result.stderr
    with socket.socket() as taken:  # a port in use: one line before any check, not a traceback
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = _funnelcast(["serve", "--tracking-uri", served.store, "--port", port], keyed)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    # build reads a store: a missing one is said so, not created empty
    missing = tmp_path / "nowhere" / "mlflow.db"
    result = _funnelcast(["build", "--tracking-uri", f"sqlite:///{missing}"], keyed)
    assert result.returncode == 2
    assert f"the MLflow store {missing} does not exist" in result.stderr
    assert not missing.parent.exists()
    # a BentoML home that cannot be written (here a file where its folder goes): one line,
    # before the registry is read (it was a 100-line traceback after the model's download)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    unwritable = {**keyed, "BENTOML_HOME": str(blocker / "bentoml")}
    # as BentoML reads the variable: ~ and $VARIABLES expanded
    home_relative = {**keyed, "HOME": str(tmp_path), "BENTOML_HOME": "~/a-file/bentoml"}
    for command, env in (("build", unwritable), ("serve", unwritable), ("build", home_relative)):
        result = _funnelcast([command, "--tracking-uri", f"sqlite:///{missing}"], env)
        assert result.returncode == 2
        said = " ".join(result.stderr.split())
        assert f"BentoML's home (BENTOML_HOME) {blocker / 'bentoml'}: {blocker} is a file" in said
        assert said.count("a folder you may write to") == 1
        assert said.endswith("set BENTOML_HOME to a folder you may write to")
        assert "Traceback" not in result.stderr


def test_funnelcast_serve_with_the_rules_fallback(
    served: Served, active_contacts: list[str], tmp_path: Path
) -> None:
    port = _free_port()
    keys = tmp_path / "keys.txt"
    keys.write_text(served.api_key + "\n", "utf-8")
    command = [FUNNELCAST, "serve", "--port", str(port), "--allow-rules-fallback"]
    command += ["--tracking-uri", f"sqlite:///{tmp_path}/empty.db", "--api-key-file", str(keys)]
    # a short request timeout (the rules answer in a millisecond), to see its 504 below
    env = {"FUNNELCAST_API_KEY": "", "FUNNELCAST_TIMEOUT_S": "1.5", "FUNNELCAST_MAX_BODY_MB": "1"}
    with _server(command, env, port):
        status, answer = _call(
            port, "/predict", key=served.api_key, body=contact_body(served, active_contacts[-1])
        )
        assert status == 200
        assert answer["model"] == "rules"
        assert answer["model_name"] is answer["model_version"] is answer["propensity"] is None
        assert _call(port, "/metadata", key=served.api_key)[1]["model"] == "rules"
        # a body that never arrives whole: answered 504 once the timeout has passed (the
        # client waits for the answer, nothing sleeps), and the worker serves on
        head = _post("/predict", served.api_key, b"x" * 100)[:-100]
        [(status, refusal)] = _raw(port, head + b'{"contact_id": "c"')
        assert status == 504
        assert json.loads(refusal) == {"error": "Not able to process the request in 1.5 seconds"}
        assert _call(port, "/readyz")[0] == 200
        # a head sent a line at a time, each line resetting uvicorn's own timer, is answered
        # 408 once the timeout has passed since the connection opened, and the connection
        # closed (review: 500 such connections held 500 of a worker's file descriptors)
        status, refusal, lines = _trickled_head(port)
        assert status == 408, (status, lines)
        assert json.loads(refusal)["timeout_s"] == 1.5
        # a connection that sends nothing is closed after as long, with no answer
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            assert idle.recv(1) == b""
        # a body over the limit is answered 413 at once, and read on while it keeps coming
        # for longer than the timeout: the client that sends it whole reads the 413 after
        # (review: the connection was cut 1.5 s after the answer, mid-upload)
        status, refusal = _slow_upload(port, served.api_key, chunks=31)
        assert status == 413, refusal
        assert json.loads(refusal)["limit_bytes"] == 2**20
        # and a keep-alive connection that sends its next request at once is served twice
        ping = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        assert [s for s, _ in _raw(port, ping + ping, answers=2)] == [200, 200]
        assert _call(port, "/readyz")[0] == 200
    assert _port_is_free(port)


def _slow_upload(port: int, key: str, *, chunks: int) -> tuple[int, bytes]:
    """POST a body of ``chunks`` pieces of 64 KiB, one every 0.1 s (a slow client's pace),
    then read the answer: its status and body."""
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {chunks * 65536}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head.encode())
        for _ in range(chunks):
            connection.sendall(b" " * 65536)
            time.sleep(0.1)  # the client's pace, not a wait for the server
        answer = connection.makefile("rb")
        status = int(answer.readline().split()[1])
        length = 0
        while (line := answer.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, answer.read(length)


def _trickled_head(port: int, lines: int = 60) -> tuple[int | None, bytes, int]:
    """Send a request's line, then one header line each time the server has not answered
    within 0.25 s, never ending the head; the answer's status and body (None when the server
    never answered), and how many header lines went out."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for sent in range(1, lines + 1):
            ready, _, _ = select.select([connection], [], [], 0.25)
            if ready:
                break
            with suppress(BrokenPipeError, ConnectionResetError):
                connection.sendall(b"X-Line-%d: a\r\n" % sent)
        else:
            return None, b"", lines
        answer = connection.makefile("rb").read()  # to the end: the server closed it
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, sent


def test_bentoml_serve_stops_when_it_cannot_serve(served: Served, tmp_path: Path) -> None:
    """No model and no fallback: the server stops with the reason and exit status 2, instead
    of restarting its workers forever; the reason said once, whatever the workers."""
    port = _free_port()
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:Funnelcast"]
    store = f"sqlite:///{tmp_path}/none.db"
    env = {**os.environ, **served.env(MLFLOW_TRACKING_URI=store, FUNNELCAST_WORKERS="2")}
    status, output = _until_it_stops([*command, "--port", str(port)], cwd=ROOT, env=env)
    assert "funnelcast cannot start, stopping the server: no model to serve" in output
    # said once, in that line: the worker's error was logged again with three tracebacks, and
    # each worker said it
    assert output.count("no model to serve") == 1, output
    assert "Traceback" not in output
    assert status == 2, output  # a failure a supervisor sees, not a clean stop
    assert _port_is_free(port)


def _until_it_stops(command: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """A server that is to stop by itself, run until it does (its whole process group
    stopped after, in any case): its exit status and output."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=READY_WITHIN_S)
    finally:
        _stop(process)
    return process.returncode, output


def _workers(server: int) -> list[psutil.Process]:
    """The server's worker processes: the children BentoML's arbiter (the server's own process,
    which holds the socket) runs the service in, each as `_bentoml_impl.worker.service
    serving.service:Funnelcast --fd N`."""
    return [
        child
        for child in psutil.Process(server).children()
        if "serving.service:Funnelcast" in " ".join(child.cmdline())
    ]


def test_a_worker_restarted_with_the_registry_gone_serves_the_model(
    served: Served, active_contacts: list[str], tmp_path: Path
) -> None:
    """Ops review: each worker loaded the model from the registry as it started, so a worker
    BentoML restarted (a crash, an OOM kill) while the registry was down stopped the whole
    server, or served the rules beside the others' model. `funnelcast serve` copies the model
    it checks under BentoML's home; with the store deleted once the server is ready, its worker
    killed is restarted and answers with the model, as before."""
    store = tmp_path / "store" / "mlflow.db"  # a store of its own, to delete
    store.parent.mkdir()
    shutil.copyfile(served.store.removeprefix("sqlite:///"), store)
    home = tmp_path / "bentoml"
    port = _free_port()
    command = [FUNNELCAST, "serve", "--port", str(port), "--tracking-uri", f"sqlite:///{store}"]
    # the worker killed below leaves BentoML's temporary folder (`bentoml-client-*`): here,
    # not in /tmp, one more for every run of the suite
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {
        "FUNNELCAST_API_KEY": served.api_key,
        "BENTOML_HOME": str(home),
        "TMPDIR": str(temporary),
    }
    body = contact_body(served, active_contacts[-2])
    with _server(command, env, port) as process:
        status, before = _call(port, "/predict", key=served.api_key, body=body)
        assert (status, before["model"], before["model_version"]) == (200, "funnelcast", "1")
        metadata = _call(port, "/metadata", key=served.api_key)[1]
        copies = home / "funnelcast" / "models"
        [copy] = (entry for entry in copies.iterdir() if not entry.name.startswith("."))
        assert copy.name.startswith("funnelcast-1-")
        # held by the server for as long as it runs (the lock `funnelcast serve` takes, kept
        # across its exec into `bentoml serve`): no other start removes it
        lock = str(copies / f".{copy.name}.lock")
        assert lock in [file.path for file in psutil.Process(process.pid).open_files()]
        assert remove_unheld_folders(copies) == []
        shutil.rmtree(store.parent)  # the registry is gone
        [worker] = _workers(process.pid)
        worker.kill()
        worker.wait(timeout=30)
        deadline = time.monotonic() + READY_WITHIN_S
        while True:  # a new worker, answering; the server never stops
            assert process.poll() is None, "the server stopped when its worker restarted"
            with suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                if _call(port, "/readyz", timeout=2)[0] == 200:
                    break
            assert time.monotonic() < deadline, f"no worker ready within {READY_WITHIN_S} s"
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)
        [restarted] = _workers(process.pid)
        assert restarted.pid != worker.pid
        assert _call(port, "/predict", key=served.api_key, body=body) == (200, before)
        assert _call(port, "/metadata", key=served.api_key) == (200, metadata)
    assert not store.exists()  # no worker made an empty store in its place
    assert _port_is_free(port)
