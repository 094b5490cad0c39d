"""Downloads against real servers on 127.0.0.1: TLS with a test CA, retries, caps and timeouts."""

from __future__ import annotations

import ssl
import time

import pytest

from tests.support.calico import manifest_path
from tests.support.httpserver import LocalCA, LocalServer, body, sequence
from tests.support.program import run_hook

PATH = "/v3.29.1/manifests/operator-crds.yaml"


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory) -> LocalCA:
    return LocalCA(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def real_3_29() -> bytes:
    return manifest_path("v3.29.1").read_bytes()


@pytest.fixture
def tls_server(test_ca):
    with LocalServer(tls=test_ca) as server:
        yield server


def validate(server: LocalServer, *extra: str, ca: LocalCA | None = None, version: str = "v3.29.1"):
    args = ["validate", "--version", version, "--url-template", server.base + "/{version}/manifests/{file}"]
    if ca:
        args += ["--ca-bundle", str(ca.ca_cert)]
    return run_hook(*args, *extra)


def test_tls_download_verified_with_the_given_ca(tls_server, test_ca, real_3_29):
    tls_server.route(PATH, body(real_3_29))
    run = validate(tls_server, ca=test_ca)
    assert run.code == 0, run
    assert "24 CRDs" in run.stdout
    assert "0f9318730926d3b5b1b2e51a671e6f603745909c422b4acf0cd8e5a7a2a67a14" in run.stdout


def test_tls_without_the_ca_is_refused(tls_server, real_3_29):
    tls_server.route(PATH, body(real_3_29))
    run = validate(tls_server)
    assert run.code == 3, run
    assert "TLS verification failed" in run.error_line and "--ca-bundle" in run.error_line


def test_plain_http_needs_allow_http(real_3_29):
    with LocalServer() as server:
        server.route(PATH, body(real_3_29))
        refused = validate(server)
        assert refused.code == 2, refused
        assert "refusing plain-http URL" in refused.error_line and "--allow-http" in refused.error_line
        assert server.served.hits == {}  # refused before any request
        allowed = validate(server, "--allow-http")
        assert allowed.code == 0, allowed


def test_sha256_mismatch_against_the_shipped_digest(tls_server, test_ca):
    tls_server.route(PATH, body(manifest_path("v3.28.2").read_bytes()))  # the wrong release's file
    run = validate(tls_server, ca=test_ca)
    assert run.code == 3, run
    assert "sha256 mismatch" in run.error_line
    assert "expected 0f9318730926d3b5b1b2e51a671e6f603745909c422b4acf0cd8e5a7a2a67a14" in run.error_line


def test_given_sha256_wins_over_the_shipped_one(tls_server, test_ca, real_3_29):
    tls_server.route(PATH, body(real_3_29))
    run = validate(tls_server, "--sha256", "ab" * 32, ca=test_ca)
    assert run.code == 3, run
    assert f"expected {'ab' * 32} (--sha256)" in run.error_line


def test_404_names_the_url_and_the_tag(tls_server, test_ca):
    run = validate(tls_server, ca=test_ca, version="v3.29.99")
    assert run.code == 3, run
    assert "no manifest at" in run.error_line and "v3.29.99" in run.error_line and "HTTP 404" in run.error_line
    assert tls_server.served.hits == {"/v3.29.99/manifests/operator-crds.yaml": 1}  # a 404 is not retried


def test_500_then_success_is_retried(tls_server, test_ca, real_3_29):
    tls_server.route(PATH, sequence(body(b"oops", status=500), body(real_3_29)))
    run = validate(tls_server, ca=test_ca)
    assert run.code == 0, run
    assert tls_server.served.hits[PATH] == 2
    assert "HTTP 500" in run.stderr and "retry 1/3" in run.stderr


def test_persistent_500_gives_up_with_exit_3(tls_server, test_ca):
    tls_server.route(PATH, body(b"down", status=503))
    run = validate(tls_server, ca=test_ca)
    assert run.code == 3, run
    assert "could not download" in run.error_line and "HTTP 503" in run.error_line
    assert tls_server.served.hits[PATH] == 4


def test_429_honours_retry_after(tls_server, test_ca, real_3_29):
    tls_server.route(PATH, sequence(body(b"slow down", status=429, headers={"Retry-After": "2"}), body(real_3_29)))
    started = time.monotonic()
    run = validate(tls_server, ca=test_ca)
    assert run.code == 0, run
    assert time.monotonic() - started >= 2.0
    assert "retry 1/3 in 2.0s" in run.stderr


def test_oversize_declared_body_is_refused(tls_server, test_ca):
    tls_server.route(PATH, body(b"x" * 1024, declared_length=17 * 1024 * 1024))
    run = validate(tls_server, ca=test_ca)
    assert run.code == 3, run
    assert "over the 16777216-byte cap" in run.error_line


def test_oversize_streamed_body_is_cut_at_the_cap(tls_server, test_ca):
    def endless(request):
        request.send_response(200)
        request.send_header("Content-Type", "text/plain")
        request.end_headers()  # no length: the body runs until the connection closes
        chunk = b"# padding\n" * 100_000
        try:
            for _ in range(30):
                request.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
    tls_server.route(PATH, endless)
    run = validate(tls_server, ca=test_ca)
    assert run.code == 3, run
    assert "more than 16777216 bytes" in run.error_line


def test_hanging_server_hits_the_timeout(tls_server, test_ca):
    def hang(request):
        time.sleep(8)
    tls_server.route(PATH, hang)
    started = time.monotonic()
    run = validate(tls_server, "--timeout", "2", ca=test_ca)
    assert run.code == 3, run
    assert time.monotonic() - started < 7
    assert "did not finish before the deadline: raise --timeout" in run.error_line


def test_dribbling_server_is_cut_at_the_deadline(tls_server, test_ca):
    """Ten bytes every half second never trips a read timeout; the deadline must still hold."""
    def dribble(request):
        request.send_response(200)
        request.send_header("Content-Length", "1000000")
        request.end_headers()
        try:
            for _ in range(40):
                request.wfile.write(b"#" * 10)
                request.wfile.flush()
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
    tls_server.route(PATH, dribble)
    started = time.monotonic()
    run = validate(tls_server, "--timeout", "3", ca=test_ca)
    assert run.code == 3, run
    assert time.monotonic() - started < 8
    assert "did not finish before the deadline" in run.error_line


def test_truncated_body_is_refused(tls_server, test_ca, real_3_29):
    tls_server.route(PATH, body(real_3_29[:50_000], declared_length=len(real_3_29)))
    run = validate(tls_server, ca=test_ca)
    assert run.code == 3, run
    assert "could not download" in run.error_line
    assert tls_server.served.hits[PATH] == 4  # a cut-off body is worth retrying


def test_html_page_with_status_200_is_refused(tls_server, test_ca):
    tls_server.route(PATH, body(b"<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html"))
    run = validate(tls_server, ca=test_ca)
    assert run.code == 3, run
    assert "HTML page, not a YAML manifest" in run.error_line


def test_redirect_loop_is_refused(tls_server, test_ca):
    def loop(request):
        request.send_response(302)
        request.send_header("Location", PATH)
        request.send_header("Content-Length", "0")
        request.end_headers()
    tls_server.route(PATH, loop)
    run = validate(tls_server, ca=test_ca)
    assert run.code == 3, run
    assert "too many redirects" in run.error_line


def test_proxy_environment_is_honoured(tls_server, test_ca, real_3_29):
    """HTTPS_PROXY pointing at a dead port proves the download goes through the proxy setting."""
    tls_server.route(PATH, body(real_3_29))
    run = run_hook("validate", "--version", "v3.29.1", "--url-template",
                   tls_server.base.replace("127.0.0.1", "localhost") + "/{version}/manifests/{file}",
                   "--ca-bundle", str(test_ca.ca_cert), "--timeout", "5",
                   env={"HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""})
    assert run.code == 3, run
    assert "proxy" in run.error_line.lower()
    assert tls_server.served.hits == {}
