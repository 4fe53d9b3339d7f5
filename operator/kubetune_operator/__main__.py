"""`kubetune-operator` / `python -m kubetune_operator`: `kopf run -m kubetune_operator` with the watched
namespaces taken from KUBETUNE_NAMESPACES (kopf fixes them before any startup hook runs, so they are
passed as its command-line flags). Extra arguments go to `kopf run` unchanged, e.g. `--verbose`."""

from __future__ import annotations

import sys

from kopf import cli

from .settings import Settings


def kopf_args(settings: Settings, extra: list[str]) -> list[str]:
    args = ["run", "-m", "kubetune_operator"]
    if not any(a in ("-A", "--all-namespaces") or a.startswith(("-n", "--namespace")) for a in extra):
        args += [f"--namespace={ns}" for ns in settings.namespaces] or ["--all-namespaces"]
    return args + extra


def main(argv: list[str] | None = None) -> None:
    args = kopf_args(Settings.from_env(), list(sys.argv[1:] if argv is None else argv))
    cli.main(args=args, prog_name="kubetune-operator")


if __name__ == "__main__":
    main()
