"""Benchmark: `calico-crd-hook apply` against kubectl on the same file and the same kind of
apiserver, interleaved, a fresh control plane for every run.

    python bench/run.py [--runs 5] [--out bench/results.md] [--paths abcdeh] [--delays 0,10,50]
                        [--sweep 1,4,8,16] [--job-start]

Paths: (a) the reported upgrade v3.28.2 -> v3.29.1, (b) a rerun with nothing to change,
(c) v3.31.7 -> v3.32.1, (d) the rerun of (b) on a cluster that also holds 300 unrelated CRDs (20 of
them with 1 MB schemas), (e) the upgrade of (a) on CRDs the hook itself applied at v3.28.2 (the
shape of every upgrade after first), (h) the GitOps sync loop: the hook after Argo CD re-applied
the same CRDs as argocd-controller, against kubectl re-applying them.

Peers: bare `kubectl apply --server-side --force-conflicts` (checks nothing), and for (a) and (c)
the careful manual procedure our guarantees correspond to: `kubectl apply --server-side
--dry-run=server`, the apply, `kubectl wait --for condition=Established`, then the Tiers, timed as
one. `--delays`: (a) and (c) again through bench/delay_proxy.py, which adds that many ms each way
(a remote apiserver), for every tool alike; `--sweep`: (a) at the largest delay with each
`--concurrency`. `--job-start`: the Job's own start in the image built from the Dockerfile.
Reports wall-time medians and ranges, ratios within rounds, peak RSS, and the CPU of client and server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "hook"))

from calico_crd_hook.tiers import tier_document  # noqa: E402 - after the sys.path entry above
from calico_crd_hook.version import ApiMode, parse_version, required_tiers  # noqa: E402 - after the sys.path entry above

from tests.support.assets import KUBERNETES_VERSION, control_plane_assets  # noqa: E402 - after the sys.path entry above
from tests.support.calico import manifest_path  # noqa: E402 - after the sys.path entry above
from tests.support.calico_cluster import install_crds_like_helm, load_documents, set_running_version  # noqa: E402 - after the sys.path entry above
from tests.support.controlplane import ControlPlane  # noqa: E402 - after the sys.path entry above
from tests.support.program import HOOK_COMMAND, hook_env  # noqa: E402 - after the sys.path entry above

NOTES_MARKER = "<!-- notes -->"


KUBECTL, CAREFUL, OURS = "kubectl", "careful kubectl", "calico-crd-hook"


@dataclass(frozen=True)
class BenchPath:
    key: str  # what --paths selects: the letter
    label: str
    installed: str  # what Helm installed first
    target: str
    rerun: bool  # the same tool applied the target once before the timed run
    unrelated_crds: int = 0  # other projects' CRDs in the cluster
    hook_applied_first: bool = False  # after Helm, calico-crd-hook applied the installed release
    argo_reapplied: bool = False  # the hook applied the target, then Argo CD re-applied it (h)
    delay_ms: int = 0  # added each way between every tool and the apiserver
    concurrency: int | None = None  # ours: --concurrency (None: the default)
    peers: tuple[str, ...] = (KUBECTL,)

    def with_delay(self, delay_ms: int) -> BenchPath:
        return replace(self, label=f"{self.label}, {delay_ms} ms each way", delay_ms=delay_ms)


BASE_PATHS = (
    BenchPath("a", "(a) upgrade v3.28.2 -> v3.29.1", "v3.28.2", "v3.29.1", rerun=False, peers=(KUBECTL, CAREFUL)),
    BenchPath("b", "(b) rerun at v3.29.1, nothing to change", "v3.28.2", "v3.29.1", rerun=True),
    BenchPath("c", "(c) upgrade v3.31.7 -> v3.32.1", "v3.31.7", "v3.32.1", rerun=False, peers=(KUBECTL, CAREFUL)),
    BenchPath("d", "(d) rerun as (b), 300 unrelated CRDs", "v3.28.2", "v3.29.1", rerun=True, unrelated_crds=300),
    BenchPath("e", "(e) as (a), the hook having applied v3.28.2", "v3.28.2", "v3.29.1", rerun=False,
              hook_applied_first=True),
    BenchPath("h", "(h) sync loop: after Argo CD re-applied v3.29.1", "v3.28.2", "v3.29.1", rerun=False,
              argo_reapplied=True),
)


def selected_paths(keys: str, delays: list[int], sweep: list[int]) -> list[BenchPath]:
    chosen = [path for path in BASE_PATHS if path.key in keys]
    for delay in (delay for delay in delays if delay > 0):
        chosen += [path.with_delay(delay) for path in BASE_PATHS if path.key in "ac" and path.key in keys]
    if sweep:
        slowest = max(delays, default=0)
        upgrade = BASE_PATHS[0].with_delay(slowest) if slowest else BASE_PATHS[0]
        chosen += [replace(upgrade, label=f"{upgrade.label}, --concurrency {n}", concurrency=n, peers=(KUBECTL,))
                   for n in sweep]
    return chosen


@dataclass(frozen=True)
class Sample:
    seconds: float
    peak_rss_kib: int
    client_cpu: float = 0.0  # the tool's own user + system CPU seconds
    server_cpu: float = 0.0  # apiserver + etcd CPU seconds while the tool ran
    server_cpu_settled: float = 0.0  # the same, until the server went idle after it


# The server works on after a tool exits (OpenAPI rebuilds, watch events of the written CRDs):
# counted until a quarter second passes with less than 10 ms of server CPU, at most 5 s.
IDLE_WINDOW_SECONDS, IDLE_CPU_SECONDS, SETTLE_LIMIT_SECONDS = 0.25, 0.01, 5.0
# The loopback goal of the performance issue: an upgrade within 1.25 times bare kubectl's time.
GOAL_RATIO = 1.25


def timed(command: list[str], env: dict[str, str], plane: ControlPlane) -> Sample:
    server_before = plane.server_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    server_during = plane.server_cpu_seconds() - server_before
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
    return Sample(seconds, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, server_during,
                  settled_server_cpu(plane) - server_before)


def settled_server_cpu(plane: ControlPlane) -> float:
    deadline = time.monotonic() + SETTLE_LIMIT_SECONDS
    used = plane.server_cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW_SECONDS)
        now = plane.server_cpu_seconds()
        if now - used < IDLE_CPU_SECONDS:
            return now
        used = now
    return used


def hook_command(kubeconfig: Path, target: str, concurrency: int | None = None) -> list[str]:
    return [*HOOK_COMMAND, "apply", "--version", target, "--manifest", str(manifest_path(target)),
            "--kubeconfig", str(kubeconfig), *(["--concurrency", str(concurrency)] if concurrency else [])]


def kubectl_command(plane: ControlPlane, kubeconfig: Path, target: str, manager: str | None = None) -> list[str]:
    return [str(plane.assets.kubectl), "--kubeconfig", str(kubeconfig), "apply", "--server-side",
            "--force-conflicts", *([f"--field-manager={manager}"] if manager else []), "-f", str(manifest_path(target))]


def careful_command(plane: ControlPlane, kubeconfig: Path, target: str, folder: Path) -> list[str]:
    """The four steps a careful person runs by hand, as one timed process."""
    kubectl = f"{plane.assets.kubectl} --kubeconfig {kubeconfig}"
    manifest = manifest_path(target)
    steps = [f"{kubectl} apply --server-side --force-conflicts --dry-run=server -f {manifest}",
             f"{kubectl} apply --server-side --force-conflicts -f {manifest}",
             f"{kubectl} wait --for condition=Established --timeout=120s -f {manifest}"]
    tiers = required_tiers(parse_version(target))
    if tiers:
        documents = [tier_document(ApiMode.V1, tier) for tier in tiers]
        tiers_file = folder / "tiers.json"
        tiers_file.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}))
        steps.append(f"{kubectl} apply --server-side -f {tiers_file}")
    return ["bash", "-c", " && ".join(f"{step} >/dev/null" for step in steps)]


def command_for(tool: str, path: BenchPath, plane: ControlPlane, kubeconfig: Path, folder: Path) -> list[str]:
    if tool == OURS:
        return hook_command(kubeconfig, path.target, path.concurrency)
    if tool == CAREFUL:
        return careful_command(plane, kubeconfig, path.target, folder)
    return kubectl_command(plane, kubeconfig, path.target, "argocd-controller" if path.argo_reapplied else None)


def one_run(tool: str, path: BenchPath, assets, env: dict[str, str]) -> Sample:
    with tempfile.TemporaryDirectory(prefix="calico-crd-hook-bench-") as name:
        folder = Path(name)
        plane = ControlPlane(assets, folder).start()
        proxy = None
        try:
            install_crds_like_helm(plane, manifest_path(path.installed))
            set_running_version(plane, path.installed)
            serve_every_kind(plane, manifest_path(path.installed))
            crowd(plane, path.unrelated_crds)
            run_env = {**env, "HOME": name}  # kubectl's discovery cache starts cold, as in a Job's Pod
            kubeconfig = plane.kubeconfig()
            if path.hook_applied_first:
                timed(hook_command(kubeconfig, path.installed), run_env, plane)
            if path.argo_reapplied:  # a sync: the hook as PreSync, then Argo CD's own apply of crds/
                timed(hook_command(kubeconfig, path.target), run_env, plane)
                timed(kubectl_command(plane, kubeconfig, path.target, "argocd-controller"), run_env, plane)
            if path.delay_ms:
                proxy, kubeconfig = delayed_kubeconfig(plane, path.delay_ms, folder / "kubeconfig-delayed")
            command = command_for(tool, path, plane, kubeconfig, folder)
            if path.rerun:
                timed(command, run_env, plane)
            settled_server_cpu(plane)  # the set-up's own after-work is not the tool's
            return timed(command, run_env, plane)
        finally:
            if proxy is not None:
                proxy.kill()
                proxy.wait()
            plane.stop()


def delayed_kubeconfig(plane: ControlPlane, delay_ms: int, path: Path, log_accepts: bool = False,
                       ca_file: str | None = None) -> tuple[subprocess.Popen, Path]:
    """The delay proxy in front of the plane, and a kubeconfig at `path` that goes through it.
    `log_accepts`: the proxy prints each connection's arrival; `ca_file`: the CA's path as the
    kubeconfig's reader sees it (in a container)."""
    proxy = subprocess.Popen([sys.executable, str(REPO / "bench" / "delay_proxy.py"), "--target",
                              f"127.0.0.1:{plane.port}", "--delay-ms", str(delay_ms),
                              *(["--log-accepts"] if log_accepts else [])],
                             stdout=subprocess.PIPE, text=True)
    port = int(proxy.stdout.readline()) if proxy.stdout else 0
    config = json.loads(plane.kubeconfig().read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    if ca_file:
        config["clusters"][0]["cluster"]["certificate-authority"] = ca_file
    path.write_text(json.dumps(config))
    return proxy, path


def serve_every_kind(plane: ControlPlane, manifest: Path) -> None:
    """A real cluster has had its CRDs for long; a fresh one answers 429 for a second or two while
    each new kind's storage initializes. Wait that out so neither tool is timed on it."""
    for document in load_documents(manifest):
        spec = document["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("storage"))
        response = plane.api("GET", f"/apis/{spec['group']}/{version}/{spec['names']['plural']}?limit=1")
        if response.status_code != 200:
            raise RuntimeError(f"{spec['names']['plural']} not served: {response.status_code}")


def crowd(plane: ControlPlane, count: int) -> None:
    """Other projects' CRDs, some large (Crossplane providers are like this)."""
    for index in range(count):
        group = f"crowd{index}.example.com"
        schema = {"type": "object", "description": "x" * (1_000_000 if index % 15 == 0 else 2_000),
                  "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
        crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": f"widgets.{group}"},
               "spec": {"group": group, "scope": "Namespaced",
                        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}]}}
        response = plane.api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        if response.status_code != 201:
            raise RuntimeError(f"could not create {crd['metadata']['name']}: {response.text[:300]}")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
    return f"{os.cpu_count()} CPUs ({model}), {memory_kib / 1024 / 1024:.0f} GiB RAM, {platform.platform()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "bench" / "results.md"))
    parser.add_argument("--paths", default="abcdeh", help="which paths, by letter (a quick look: --paths ac --out -)")
    parser.add_argument("--delays", default="0,10,50", help="ms added each way for (a) and (c), comma-separated")
    parser.add_argument("--sweep", default="1,4,8,16", help="--concurrency values for (a) at the largest delay ('' for none)")
    parser.add_argument("--job-start", action="store_true", help="also time the Job's start in the built image")
    args = parser.parse_args()
    assets = control_plane_assets()
    env = hook_env()
    paths = selected_paths(args.paths, _numbers(args.delays), _numbers(args.sweep))
    results: dict[tuple[str, str], list[Sample]] = {}
    for index in range(args.runs):
        for path in paths:
            tools = [OURS, *path.peers]
            tools = tools[index % len(tools):] + tools[:index % len(tools)]  # each tool goes first in turn
            for tool in tools:
                sample = one_run(tool, path, assets, env)
                results.setdefault((path.label, tool), []).append(sample)
                print(f"run {index + 1}/{args.runs} {path.label} {tool}: {sample.seconds:.2f}s "
                      f"{sample.peak_rss_kib / 1024:.0f} MiB, CPU client {sample.client_cpu:.2f}s server "
                      f"{sample.server_cpu:.2f}s ({sample.server_cpu_settled:.2f}s until idle)", flush=True)
    report = render(results, paths, args)
    if args.job_start:
        from bench.job_start import measure_job_start, render_job_start

        report += "\n" + render_job_start(measure_job_start(args.runs, assets))
    if args.out == "-":
        print(report)
        return 0
    out = Path(args.out)
    previous = out.read_text() if out.exists() else ""
    if NOTES_MARKER in previous:  # hand-written analysis below the marker survives a re-run
        report += "\n" + previous[previous.index(NOTES_MARKER):]
    out.write_text(report)
    print(report)
    return 0


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def render(results: dict[tuple[str, str], list[Sample]], paths: list[BenchPath], args: argparse.Namespace) -> str:
    kubectl_version = subprocess.run([str(control_plane_assets().kubectl), "version", "--client", "-o", "yaml"],
                                     capture_output=True, text=True).stdout
    kubectl_line = next((line.split(":", 1)[1].strip() for line in kubectl_version.splitlines()
                         if "gitVersion" in line), "?")
    import yaml

    lines = [
        "# Benchmark results",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/run.py --runs {args.runs} --paths {args.paths} "
        f"--delays {args.delays} --sweep {args.sweep}{' --job-start' if args.job_start else ''}`.",
        "",
        f"- Machine: {machine()}",
        f"- kube-apiserver and etcd: Kubernetes {KUBERNETES_VERSION} test control plane on 127.0.0.1, "
        "a fresh one for every run; a delay goes through bench/delay_proxy.py for every tool alike",
        f"- kubectl {kubectl_line}; Python {platform.python_version()}; PyYAML {yaml.__version__} "
        f"(libyaml: {yaml.__with_libyaml__})",
        "- Same manifest file for every tool; runs interleaved, the first tool rotating each round;",
        "  wall time of the whole process (start-up included); peak RSS from wait4().",
        f"- {KUBECTL}: `kubectl apply --server-side --force-conflicts` alone, which checks nothing; {CAREFUL}: "
        "the dry-run, the apply, `kubectl wait --for condition=Established` and the Tiers, as one.",
        "- calico-crd-hook validates offline, runs the read-only checks and the server-side dry-run of every",
        "  CRD it writes, waits for Established and creates the Tiers.",
        "",
        "| path | peer | calico-crd-hook median (range) | peer median (range) | ratio of medians | "
        "ratio within each round: median (range) | peak RSS ours | peak RSS peer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        ours = results[(path.label, OURS)]
        for peer in path.peers:
            theirs = results[(path.label, peer)]
            ours_median = statistics.median(s.seconds for s in ours)
            theirs_median = statistics.median(s.seconds for s in theirs)
            lines.append(
                f"| {path.label} | {peer} | {ours_median:.2f} s ({_range(ours)}) | {theirs_median:.2f} s ({_range(theirs)}) | "
                f"{ours_median / theirs_median:.2f} | {_paired_ratios(ours, theirs)} | "
                f"{max(s.peak_rss_kib for s in ours) / 1024:.0f} MiB | {max(s.peak_rss_kib for s in theirs) / 1024:.0f} MiB |")
    lines += ["", "CPU seconds, medians (client: the tool's process; server: kube-apiserver + etcd during the run, "
              "and until the server went idle after it), against bare kubectl:", "",
              "| path | ours client | ours server | ours server until idle | kubectl client | kubectl server "
              f"| kubectl server until idle | ours/kubectl, all CPU until idle | cores kept busy, ours / kubectl "
              f"| cores ours would need to end within {GOAL_RATIO}× kubectl's time (the box has {os.cpu_count()}) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        ours, theirs = results[(path.label, OURS)], results[(path.label, KUBECTL)]
        ours_cpu, theirs_cpu = _cpu_medians(ours), _cpu_medians(theirs)
        lines.append(f"| {path.label} | " + " | ".join(f"{value:.2f}" for value in (*ours_cpu, *theirs_cpu)) +
                     f" | {(ours_cpu[0] + ours_cpu[2]) / (theirs_cpu[0] + theirs_cpu[2]):.2f} | "
                     f"{_cores_busy(ours):.2f} / {_cores_busy(theirs):.2f} | {_cores_needed(ours, theirs):.2f} |")
    lines += ["", "All runs (seconds):", ""]
    for (label, tool), samples in results.items():
        lines.append(f"- {label}, {tool}: " + ", ".join(f"{s.seconds:.2f}" for s in samples))
    return "\n".join(lines) + "\n"


def _cpu_medians(samples: list[Sample]) -> tuple[float, float, float]:
    return (statistics.median(s.client_cpu for s in samples), statistics.median(s.server_cpu for s in samples),
            statistics.median(s.server_cpu_settled for s in samples))


def _cores_busy(samples: list[Sample]) -> float:
    """The client's and the server's CPU during the run over its wall time, median of the runs."""
    return statistics.median((s.client_cpu + s.server_cpu) / s.seconds for s in samples)


def _cores_needed(ours: list[Sample], theirs: list[Sample]) -> float:
    """The cores our run's CPU would keep busy, on average over the whole run, to end within
    GOAL_RATIO times kubectl's wall time of the same round (median of the rounds). At or above the
    box's core count the goal cannot be met by scheduling: only by less CPU."""
    return statistics.median((mine.client_cpu + mine.server_cpu) / (GOAL_RATIO * other.seconds)
                             for mine, other in zip(ours, theirs))


def _paired_ratios(ours: list[Sample], theirs: list[Sample]) -> str:
    """Ours over kubectl's run of the same round: the two ran minutes apart at most, so this ratio
    does not move with the box's drift the way the ratio of medians can."""
    ratios = [mine.seconds / other.seconds for mine, other in zip(ours, theirs)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def _range(samples: list[Sample]) -> str:
    return f"{min(s.seconds for s in samples):.2f}-{max(s.seconds for s in samples):.2f}"


if __name__ == "__main__":
    sys.exit(main())
