"""A real, throw-away Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager.

    from k8s.cluster import LocalCluster

    with LocalCluster() as cluster:
        cluster.kubectl("create", "namespace", "demo")
        cluster.apply("manifests/crd.yaml")
        subprocess.run([...], env=cluster.env())        # KUBECONFIG points at an admin kubeconfig

The binaries come from tests/k8s/build-kube.sh (kube-apiserver / kube-controller-manager v1.20.2, cached in
~/.cache/finetune-operator/kube-1.20/bin or $FTJ_KUBE_CACHE/bin) and Debian's `etcd`. Everything binds to
loopback on free ports and lives in a temporary directory, so several clusters can run side by side.

There is no kubelet and no scheduler: see node_agent.py for the stand-in that registers a Node, binds pods
and runs them as local processes. The controller manager runs (garbage collector, namespace deletion,
service-account + token controllers, Job controller, ...), minus the node lifecycle controller, which would
otherwise taint/evict pods whenever no node agent is heartbeating.

Authentication is by static bearer tokens (`--token-auth-file`): `cluster.token` is an admin in group
system:masters; service-account tokens (from the Secrets that the token controller creates) work too.
Authorization is RBAC only.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets as _secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-kube.sh"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


def kube_cache_dir() -> Path:
    return Path(os.environ.get("FTJ_KUBE_CACHE") or Path.home() / ".cache/finetune-operator/kube-1.20")


def kube_bin_dir() -> Path:
    return kube_cache_dir() / "bin"


def missing_tools(bin_dir: Path | None = None) -> list[str]:
    """Names of the binaries LocalCluster needs that are not there (empty list: ready to start)."""
    bin_dir = Path(bin_dir) if bin_dir else kube_bin_dir()
    missing = [
        b for b in ("kube-apiserver", "kube-controller-manager") if not os.access(bin_dir / b, os.X_OK)
    ]
    missing += [t for t in ("etcd", "kubectl", "openssl") if not shutil.which(t)]
    return missing


def build_binaries(timeout: float = 3600) -> subprocess.CompletedProcess:
    """Runs build-kube.sh (a no-op taking milliseconds when the binaries are cached). Output is captured."""
    return subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_kubeconfig(
    path: str | os.PathLike,
    server: str,
    ca_pem: bytes | str,
    token: str,
    namespace: str | None = None,
    user: str = "user",
) -> Path:
    """Writes a self-contained kubeconfig (CA inlined) authenticating with a bearer token."""
    if isinstance(ca_pem, str):
        ca_pem = ca_pem.encode()
    context: dict[str, Any] = {"cluster": "local", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": context}],
        "current-context": "local",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _is_file(text: str) -> bool:
    try:
        return "\n" not in text and Path(text).exists()
    except OSError:  # e.g. a one-line YAML document too long for a file name
        return False


class ClusterStartError(RuntimeError):
    pass


class KubeHTTPError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str):
        super().__init__(f"{method} {path}: HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd[1:]))} exited {self.returncode}:\n{self.stderr}{self.stdout}"


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ClusterStartError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


def generate_pki(directory: Path) -> None:
    """ca.crt/ca.key, apiserver.crt/key (SANs for loopback and the in-cluster names) and sa.key.

    EC keys for the TLS certificates (fast to make); RSA for service-account token signing (RS256 is what
    every client library expects)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=kubetune-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=directory,
    )
    _openssl(
        "req",
        *ec,
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=directory,
    )
    sans = ",".join(
        [
            f"IP:127.0.0.1,IP:{SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default",
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    (directory / "apiserver.ext").write_text(
        f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "apiserver.crt",
        "-days",
        "3650",
        "-extfile",
        "apiserver.ext",
        cwd=directory,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)


class _Process:
    """A control-plane process whose output goes to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path):
        self.name, self.argv, self.log = name, argv, log
        prefix: list[str] = []
        setpriv = shutil.which("setpriv")
        # Parent-death signal, so a test run that is SIGKILLed does not leave servers behind. It fires when
        # the *thread* that started the process exits, hence only from the main thread.
        if setpriv and threading.current_thread() is threading.main_thread():
            prefix = [setpriv, "--pdeathsig", "TERM", "--"]
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                prefix + argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class LocalCluster:
    """etcd + kube-apiserver (+ kube-controller-manager) on loopback; a context manager.

    Attributes once started: `dir` (temp dir with certificates, logs and kubeconfigs), `server` (https URL),
    `token` (admin bearer token, group system:masters), `kubeconfig` (Path of the admin kubeconfig),
    `ca_file` / `ca_pem`, `processes` (name -> _Process, logs at `dir/<name>.log`).
    """

    def __init__(
        self,
        bin_dir: str | os.PathLike | None = None,
        *,
        controller_manager: bool = True,
        apiserver_args: Iterable[str] = (),
        controller_manager_args: Iterable[str] = (),
        startup_timeout: float = 120.0,
        keep_dir: bool | None = None,
        verbosity: int = 1,
    ):
        self.bin_dir = Path(bin_dir) if bin_dir else kube_bin_dir()
        self.with_controller_manager = controller_manager
        self.apiserver_args = list(apiserver_args)
        self.controller_manager_args = list(controller_manager_args)
        self.startup_timeout = startup_timeout
        self.keep_dir = bool(os.environ.get("FTJ_KUBE_KEEP")) if keep_dir is None else keep_dir
        self.verbosity = verbosity
        self.processes: dict[str, _Process] = {}
        self.dir: Path | None = None
        self._etcd_dir: Path | None = None
        self.server = ""
        self.token = ""
        self.kubeconfig = Path()
        self.ca_file = Path()
        self.ca_pem = b""
        self.startup_seconds: float | None = None
        self._ssl: ssl.SSLContext | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        missing = missing_tools(self.bin_dir)
        if missing:
            raise ClusterStartError(f"missing {', '.join(missing)}: run {BUILD_SCRIPT}")
        t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="kubetune-kube-"))
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start(self) -> None:
        assert self.dir is not None
        d = self.dir
        deadline = time.monotonic() + self.startup_timeout
        generate_pki(d / "pki")
        self.ca_file = d / "pki" / "ca.crt"
        self.ca_pem = self.ca_file.read_bytes()
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))

        # etcd: its data on tmpfs when there is one (fsync on a busy disk makes the apiserver crawl).
        shm = Path("/dev/shm")
        self._etcd_dir = Path(
            tempfile.mkdtemp(prefix="kubetune-etcd-", dir=shm if os.access(shm, os.W_OK) else d)
        )
        client, peer = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                shutil.which("etcd") or "etcd",
                "--name",
                "default",
                "--data-dir",
                str(self._etcd_dir / "data"),
                "--listen-client-urls",
                f"http://127.0.0.1:{client}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{client}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer}",
                "--log-level",
                "warn",
                "--logger",
                "zap",
            ],
        )
        self._wait(
            lambda: self._http_ok(f"http://127.0.0.1:{client}/health"), deadline, "etcd /health", "etcd"
        )

        self.token = _secrets.token_hex(16)
        cm_token = _secrets.token_hex(16)
        (d / "tokens.csv").write_text(
            f'{self.token},admin,admin,"system:masters"\n'
            f'{cm_token},system:kube-controller-manager,kube-controller-manager,"system:masters"\n'
        )
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = d / "pki"
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                "--insecure-port=0",
                f"--cert-dir={d / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.key'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # TaintNodesByCondition would give every new Node a not-ready taint that only the (disabled) node
                # lifecycle controller removes. ServiceAccount admission needs the controller manager's token
                # controller; without it pods could not be created at all.
                "--disable-admission-plugins=TaintNodesByCondition"
                + ("" if self.with_controller_manager else ",ServiceAccount"),
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--endpoint-reconciler-type=none",  # the `kubernetes` Service cannot have a loopback endpoint
                "--feature-gates=TTLAfterFinished=true",  # Job.spec.ttlSecondsAfterFinished (alpha in 1.20)
                f"--v={self.verbosity}",
                *self.apiserver_args,
            ],
        )
        self._wait(
            lambda: self._http_ok(f"{self.server}/readyz"),
            deadline,
            "kube-apiserver /readyz",
            "kube-apiserver",
        )
        self.kubeconfig = write_kubeconfig(
            d / "admin.kubeconfig", self.server, self.ca_pem, self.token, user="admin"
        )

        if self.with_controller_manager:
            cm_kubeconfig = write_kubeconfig(
                d / "controller-manager.kubeconfig",
                self.server,
                self.ca_pem,
                cm_token,
                user="kube-controller-manager",
            )
            self._spawn(
                "kube-controller-manager",
                [
                    str(self.bin_dir / "kube-controller-manager"),
                    f"--kubeconfig={cm_kubeconfig}",
                    "--leader-elect=false",
                    "--port=0",
                    "--secure-port=0",
                    "--use-service-account-credentials=false",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                    f"--cluster-signing-key-file={pki / 'ca.key'}",
                    # No cloud, no pod network, and the node agent stands in for the kubelet: the node lifecycle
                    # controller would taint the node and evict pods whenever no agent is heartbeating.
                    "--controllers=*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-route,-service",
                    "--feature-gates=TTLAfterFinished=true",
                    f"--v={self.verbosity}",
                    *self.controller_manager_args,
                ],
            )
            # The default service account with its token Secret: pods can be created from now on.
            self._wait(
                lambda: self._service_account_has_token("default", "default"),
                deadline,
                "the default ServiceAccount and its token",
                "kube-controller-manager",
            )
        else:
            self._wait(
                lambda: self.get("/api/v1/namespaces/default") is not None,
                deadline,
                "the default namespace",
                "kube-apiserver",
            )

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._etcd_dir:
            shutil.rmtree(self._etcd_dir, ignore_errors=True)
            self._etcd_dir = None
        if self.dir and not self.keep_dir and not getattr(self, "_failed", False):
            shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self.dir is not None
        self.processes[name] = _Process(name, argv, self.dir / f"{name}.log")

    def _wait(self, ok: Callable[[], bool], deadline: float, what: str, proc: str) -> None:
        while True:
            for p in self.processes.values():
                if not p.alive():
                    self._fail(f"{p.name} exited with code {p.popen.returncode} while waiting for {what}")
            try:
                if ok():
                    return
            except (OSError, KubeHTTPError):
                pass
            if time.monotonic() > deadline:
                self._fail(f"timed out after {self.startup_timeout:.0f}s waiting for {what} ({proc})")
            time.sleep(0.1)

    def _fail(self, message: str) -> None:
        self._failed = True  # keep self.dir (logs) for inspection
        parts = [message, f"logs in {self.dir}"]
        for p in self.processes.values():
            parts.append(f"----- {p.name} ({p.log}), last lines:\n{p.tail()}")
        raise ClusterStartError("\n".join(parts))

    def log_tail(self, name: str, lines: int = 60) -> str:
        """Last lines of a control-plane log: "etcd", "kube-apiserver" or "kube-controller-manager"."""
        return self.processes[name].tail(lines)

    # ---------------------------------------------------------------- HTTP (admin) without the client library

    def _http_ok(self, url: str) -> bool:
        req = urllib.request.Request(url)
        if url.startswith("https"):
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(
                req, timeout=5, context=self._ssl if url.startswith("https") else None
            ) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        """A JSON request to the apiserver as admin (or `token`); returns the decoded reply.
        Raises KubeHTTPError for non-2xx replies (`.status`)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise KubeHTTPError(e.code, method, path, e.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else None

    def get(self, path: str, **kw: Any) -> Any:
        """GET returning None on 404."""
        try:
            return self.request("GET", path, **kw)
        except KubeHTTPError as e:
            if e.status == 404:
                return None
            raise

    def _service_account_has_token(self, namespace: str, name: str) -> bool:
        sa = self.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        return bool(sa and sa.get("secrets"))

    # ---------------------------------------------------------------- conveniences for tests

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ plus KUBECONFIG=<admin kubeconfig> (and `extra`), for subprocesses."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
        env["KUBECONFIG"] = str(self.kubeconfig)
        env.update(extra)
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
        kubeconfig: str | os.PathLike | None = None,
    ) -> subprocess.CompletedProcess:
        """Runs the real kubectl against this cluster; text output captured. check=True raises
        KubectlError (a subprocess.CalledProcessError whose message includes stderr) on failure."""
        argv = [shutil.which("kubectl") or "kubectl", f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise KubectlError(r.returncode, argv, r.stdout, r.stderr)
        return r

    def apply(
        self, manifest: str | os.PathLike | dict | list, namespace: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        """`kubectl apply -f`: a file/directory path, a YAML string, or a dict / list of dicts."""
        ns = ["-n", namespace] if namespace else []
        if isinstance(manifest, (dict, list)):
            docs = manifest if isinstance(manifest, list) else [manifest]
            return self.kubectl("apply", *ns, "-f", "-", input=yaml.safe_dump_all(docs), check=check)
        if isinstance(manifest, os.PathLike) or _is_file(manifest):
            return self.kubectl("apply", *ns, "-f", str(manifest), check=check)
        return self.kubectl("apply", *ns, "-f", "-", input=str(manifest), check=check)

    def make_token_kubeconfig(
        self, token: str, path: str | os.PathLike, namespace: str | None = None, user: str = "user"
    ) -> Path:
        """A kubeconfig for this cluster authenticating with another bearer token (e.g. a ServiceAccount's)."""
        return write_kubeconfig(path, self.server, self.ca_pem, token, namespace=namespace, user=user)

    def api_client(self, kubeconfig: str | os.PathLike | None = None):
        """A kubernetes.client.ApiClient for this cluster (admin unless `kubeconfig` is given)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def create_namespace(self, name: str, labels: dict[str, str] | None = None, timeout: float = 60) -> dict:
        """Creates a namespace and waits for its default ServiceAccount token (needed before pods can be
        created: the ServiceAccount admission plugin rejects pods until then)."""
        ns = self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}},
        )
        self.wait_for(
            lambda: self._service_account_has_token(name, "default"),
            timeout,
            f"default ServiceAccount token in namespace {name}",
        )
        return ns

    def delete_namespace(self, name: str, wait: bool = False, timeout: float = 120) -> None:
        with contextlib.suppress(KubeHTTPError):
            self.request("DELETE", f"/api/v1/namespaces/{name}")
        if wait:
            self.wait_for(
                lambda: self.get(f"/api/v1/namespaces/{name}") is None,
                timeout,
                f"namespace {name} to be deleted",
            )

    def service_account_token(self, namespace: str, name: str, timeout: float = 60) -> str:
        """The token of a ServiceAccount, from the Secret the token controller creates for it."""
        found: list[str] = []

        def ready() -> bool:
            sa = self.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
            for ref in (sa or {}).get("secrets") or []:
                secret = self.get(f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}")
                token = ((secret or {}).get("data") or {}).get("token")
                if secret and secret.get("type") == "kubernetes.io/service-account-token" and token:
                    found.append(base64.b64decode(token).decode())
                    return True
            return False

        self.wait_for(ready, timeout, f"token Secret of ServiceAccount {namespace}/{name}")
        return found[0]

    @staticmethod
    def wait_for(
        predicate: Callable[[], Any], timeout: float = 30, what: str = "condition", interval: float = 0.2
    ) -> Any:
        """Polls until predicate() is truthy (returns it); TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)


def main() -> None:
    """`python tests/k8s/cluster.py`: start a cluster and keep it up until Ctrl-C (for manual poking)."""
    import signal

    with LocalCluster() as c:
        print(f"up in {c.startup_seconds:.1f}s\nexport KUBECONFIG={c.kubeconfig}\nlogs: {c.dir}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.alive() for p in c.processes.values()):
                time.sleep(1)


if __name__ == "__main__":
    main()
