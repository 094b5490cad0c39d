"""Stage 2: the manifest's bytes, from a file, a bundle folder or a URL, checked against a digest."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from calico_crd_hook.errors import ManifestRejected, UsageError
from calico_crd_hook.releases import release_table
from calico_crd_hook.retry import DOWNLOAD_BACKOFF, RETRIED_STATUS, GaveUp, Retry, retry_after, with_retries
from calico_crd_hook.version import ApiMode, CalicoVersion

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

DEFAULT_URL_TEMPLATE = "https://raw.githubusercontent.com/projectcalico/calico/{version}/manifests/{file}"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 30.0
MAX_ATTEMPTS = 4
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class SourceOptions:
    manifest_file: Path | None = None
    bundle_dir: Path | None = None
    url_template: str = DEFAULT_URL_TEMPLATE
    sha256: str | None = None
    ca_bundle: Path | None = None
    allow_http: bool = False
    require_pinned: bool = False


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    origin: str
    sha256: str


@lru_cache(maxsize=1)
def known_digests() -> dict[tuple[str, str], str]:
    """(tag, file name) -> sha256 of every released Calico manifest, shipped in the package."""
    text = resources.files("calico_crd_hook").joinpath("data/SHA256SUMS").read_text()
    digests = {}
    for line in text.splitlines():
        if line.strip():
            digest, relative_path = line.split()
            tag, file_name = relative_path.split("/", 1)
            digests[(tag, file_name)] = digest
    return digests


def fetch_manifest(options: SourceOptions, version: CalicoVersion | None, mode: ApiMode,
                   deadline: float) -> FetchedManifest:
    expected, pinned_by = _expected_digest(options, version, mode)
    if options.manifest_file is not None:
        origin = str(options.manifest_file)
        data = _read_local(options.manifest_file, MAX_MANIFEST_BYTES)
    elif options.bundle_dir is not None:
        if version is None:
            raise UsageError("--bundle-dir needs --version to know which folder to read")
        path = options.bundle_dir / version.tag / mode.manifest_file
        compressed = path.with_name(path.name + ".gz")
        if not path.exists() and compressed.exists():  # a gzipped file fits a 1 MiB ConfigMap
            path = compressed
        origin = str(path)
        data = _read_local(path, MAX_MANIFEST_BYTES, missing_hint=(
            f"the bundle has no {mode.manifest_file} for {version}: add it with "
            f"`calico-crd-hook bundle --version {version} --out {options.bundle_dir}`"))
    else:
        if version is None:
            raise UsageError("downloading a manifest needs --version")
        url = manifest_url(options, version, mode)
        origin = _without_credentials(url)
        data = _download(url, options, deadline)
    actual = hashlib.sha256(data).hexdigest()
    if expected is not None and actual != expected:
        raise ManifestRejected(
            f"sha256 mismatch for {origin}: got {actual}, expected {expected} ({pinned_by}); "
            "the file is not the released manifest: fetch it again or pass the right --sha256")
    # A file given without a version that is byte for byte a released one (diff --from-manifest)
    # is as good as pinned; with a version, only that version's digest pins it.
    if expected is None and (version is not None or release_table().with_sha256(actual) is None):
        log.warning("no digest pins %s (sha256 %s): pass --sha256 to pin it", origin, actual)
    return FetchedManifest(data=data, origin=origin, sha256=actual)


def manifest_url(options: SourceOptions, version: CalicoVersion, mode: ApiMode) -> str:
    template = options.url_template
    if mode is not ApiMode.V1 and "{file}" not in template:
        raise UsageError(
            f"--url-template has no {{file}} placeholder, but API mode {mode.value} needs "
            f"{mode.manifest_file}: add {{file}} to the template")
    try:
        url = template.format(version=version.tag, file=mode.manifest_file)
    except (KeyError, IndexError, ValueError) as error:
        raise UsageError(f"invalid --url-template {template!r} ({error}): only {{version}} and {{file}} "
                         "may appear in braces") from None
    scheme = urlsplit(url).scheme
    if scheme == "http" and not options.allow_http:
        raise UsageError(f"refusing plain-http URL {url}: use https, or pass --allow-http for a "
                         "mirror inside your cluster network")
    if scheme not in ("http", "https"):
        raise UsageError(f"unsupported URL {url}: --url-template must give an https URL")
    return url


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="<redacted>@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def _expected_digest(options: SourceOptions, version: CalicoVersion | None,
                     mode: ApiMode) -> tuple[str | None, str | None]:
    if options.sha256:
        digest = options.sha256.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise UsageError(f"invalid --sha256 {options.sha256!r}: give 64 hex digits")
        return digest, "--sha256"
    if version is not None:
        shipped = known_digests().get((version.tag, mode.manifest_file))
        if shipped:
            return shipped, f"the digest shipped for Calico {version}"
    if options.require_pinned:
        what = f"Calico {version}" if version else "this manifest"
        raise UsageError(f"no known digest for {what} and --require-pinned is set: pass --sha256")
    return None, None


def _read_local(path: Path, max_bytes: int, missing_hint: str | None = None) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ManifestRejected(f"{path} is {size} bytes, over the {max_bytes}-byte cap: "
                                   "this is not a Calico CRD manifest")
        data = path.read_bytes()
        return _gunzip(data, path, max_bytes) if path.name.endswith(".gz") else data
    except FileNotFoundError:
        raise UsageError(missing_hint or f"manifest file {path} does not exist: check the path") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a manifest file: name the file") from None
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied") from None


def _gunzip(data: bytes, path: Path, max_bytes: int) -> bytes:
    """Decompress with the size cap applied to the output, so a gzip bomb stops early."""
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        plain = decompressor.decompress(data, max_bytes + 1)
    except zlib.error as error:
        raise ManifestRejected(f"{path} is not a valid gzip file ({error}): recompress it with gzip") from None
    if len(plain) > max_bytes:
        raise ManifestRejected(f"{path} expands to more than {max_bytes} bytes, the size cap: "
                               "this is not a Calico CRD manifest")
    return plain


def _download(url: str, options: SourceOptions, deadline: float) -> bytes:
    import requests  # only a download needs it: a file, a bundle and the no-op never import it (bench/results.md)

    session = requests.Session()
    session.max_redirects = MAX_REDIRECTS
    verify: str | bool = str(options.ca_bundle) if options.ca_bundle else True
    if options.ca_bundle and not options.ca_bundle.is_file():
        raise UsageError(f"--ca-bundle {options.ca_bundle} does not exist: give a PEM file")
    def attempt() -> bytes:
        try:
            return _download_once(session, url, options, verify, deadline)
        except requests.exceptions.SSLError as error:
            raise ManifestRejected(f"TLS verification failed for {url} ({_short(error)}): "
                                   "pass --ca-bundle with your mirror's CA") from None
        except requests.exceptions.TooManyRedirects:
            raise ManifestRejected(f"too many redirects fetching {url}: the URL loops; "
                                   "fix --url-template") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as error:
            raise Retry(_short(error)) from None

    try:
        return with_retries(attempt, deadline, f"download of {url}", DOWNLOAD_BACKOFF,
                            max_attempts=MAX_ATTEMPTS)
    except GaveUp as gave_up:
        if gave_up.deadline_reached:
            raise ManifestRejected(f"download of {url} did not finish before the deadline: "
                                   "raise --timeout, or use --bundle-dir") from None
        raise ManifestRejected(f"could not download {url}: {gave_up.last.problem}; check the network, "
                               "proxy settings (HTTPS_PROXY) or use --bundle-dir") from None


def _download_once(session: requests.Session, url: str, options: SourceOptions, verify: str | bool,
                   deadline: float) -> bytes:
    remaining = max(0.1, deadline - time.monotonic())
    timeouts = (min(CONNECT_TIMEOUT_SECONDS, remaining), min(READ_TIMEOUT_SECONDS, remaining))
    with session.get(url, stream=True, verify=verify, timeout=timeouts) as response:
        # A server that dribbles bytes never trips the read timeout: cut the connection at the
        # deadline instead, which wakes the blocked read.
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _cut_connection, (response,))
        watchdog.daemon = True
        watchdog.start()
        try:
            return _read_body(response, url, options)
        finally:
            watchdog.cancel()


def _cut_connection(response: requests.Response) -> None:
    # urllib3 hands the socket to http.client's response once the headers are read.
    buffered = getattr(getattr(response.raw, "_fp", None), "fp", None)
    sock = getattr(getattr(buffered, "raw", None), "_sock", None) or \
        getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _read_body(response: requests.Response, url: str, options: SourceOptions) -> bytes:
    if response.status_code in RETRIED_STATUS:
        raise Retry(f"HTTP {response.status_code}", retry_after(response.headers.get("Retry-After")), answered=True)
    if response.status_code == 404:
        raise ManifestRejected(f"no manifest at {url} (HTTP 404): check that the version exists "
                               "as a Calico release tag, or fix --url-template")
    if response.status_code != 200:
        raise ManifestRejected(f"fetching {url} failed with HTTP {response.status_code}: "
                               "check the URL and any credentials your mirror needs")
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
        raise ManifestRejected(f"{url} is {declared} bytes, over the {MAX_MANIFEST_BYTES}-byte cap: "
                               "this is not a Calico CRD manifest")
    body = bytearray()
    for chunk in response.iter_content(chunk_size=256 * 1024):
        body.extend(chunk)
        if len(body) > MAX_MANIFEST_BYTES:
            raise ManifestRejected(f"{url} sent more than {MAX_MANIFEST_BYTES} bytes, the size cap: "
                                   "this is not a Calico CRD manifest")
    if _looks_like_html(response.headers.get("Content-Type", ""), bytes(body[:512])):
        raise ManifestRejected(f"{url} returned an HTML page, not a YAML manifest: check the "
                               "URL, or a proxy or captive portal answering for it")
    return bytes(body)


def _looks_like_html(content_type: str, body: bytes) -> bool:
    head = body[:512].lstrip().lower()
    return "text/html" in content_type.lower() or head.startswith((b"<!doctype html", b"<html"))


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]
