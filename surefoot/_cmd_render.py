"""``surefoot render``, ``surefoot deploy`` and ``surefoot traffic``: Surefoot on a cluster.

``render`` needs no cluster; ``deploy`` and ``traffic`` reach one through a kubeconfig (or the
in-cluster service account). The Knative branch of ``surefoot status`` is
``knative.manifests._deploy.knative_status``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from surefoot.cli import EXIT_FAILED, CliError

DEFAULT_CONFIG = "surefoot.yaml"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "render",
        help="write the Kubernetes/Knative manifests for a cluster",
        description="Render the manifests from a config file (default: ./surefoot.yaml if it "
        "exists, else built-in defaults). Plain YAML, kustomize-friendly.",
    )
    _config_flags(p)
    p.add_argument(
        "--out",
        default="-",
        help="directory to write (one file per component and a kustomization.yaml), or '-' "
        "(default) for one YAML stream on stdout: surefoot render | kubectl apply -f -",
    )
    p.set_defaults(func=run_render)

    p = subparsers.add_parser(
        "deploy",
        help="render and server-side apply the manifests to the current cluster",
        description="Render, then server-side apply every object (field manager 'surefoot').",
    )
    _config_flags(p)
    _kube_flags(p)
    p.add_argument(
        "--dry-run", action="store_true", help="let the API server check everything, store nothing"
    )
    p.add_argument("--field-manager", default="surefoot")
    p.add_argument(
        "--reset-traffic", action="store_true",
        help="apply the rendered traffic split even if the cluster's live split differs "
        "(default: keep the live split, e.g. one rerouted to the fallback)",
    )
    p.set_defaults(func=run_deploy)

    p = subparsers.add_parser(
        "traffic",
        help="show or set the traffic split between the primary and fallback revisions",
        description="Show the traffic split, or 'surefoot traffic set primary=0 fallback=100' "
        "(names are tags or revision names; percents must sum to 100).",
    )
    p.add_argument("words", nargs="*", metavar="[set NAME=PERCENT ...]")
    p.add_argument("--platform", choices=["knative"], default="knative")
    p.add_argument(
        "-f",
        "--file",
        help=f"config file naming namespace and service (default: ./{DEFAULT_CONFIG} if present)",
    )
    p.add_argument(
        "--service",
        help="inference Knative Service (default: $SUREFOOT_SERVICE, else <name>-llm of the "
        "config)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _kube_flags(p)
    p.set_defaults(func=run_traffic)


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", help=f"config file (default: ./{DEFAULT_CONFIG} if present)")
    p.add_argument("--shape", choices=["knative", "kubernetes"], help="override the config's shape")
    p.add_argument("--namespace", help="override the config's namespace")


def _kube_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    if not any(a.dest == "namespace" for a in p._actions):
        p.add_argument(
            "--namespace", help="namespace (default: $SUREFOOT_NAMESPACE, else the config's)"
        )


def _load(args: argparse.Namespace) -> Any:
    from knative.manifests import RenderConfigError, load_config
    from knative.serving import DEFAULT_GENERATION_MODEL

    path = args.file
    if path is None and Path(DEFAULT_CONFIG).exists():
        path = DEFAULT_CONFIG
    overrides: dict[str, Any] = {"shape": args.shape, "namespace": args.namespace}
    if path is None:
        overrides["model"] = DEFAULT_GENERATION_MODEL
    try:
        return load_config(path, **overrides)
    except RenderConfigError as exc:
        raise CliError(str(exc)) from exc


def run_render(args: argparse.Namespace) -> int:
    from knative.manifests import read_secret_file, render, to_stream, write

    config = _load(args)
    if args.out == "-":
        sys.stdout.write(to_stream(render(config)))
        return 0
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a directory")
    # the credentials of an earlier render into the same folder are kept: pods running with
    # them keep working after the next apply
    files = render(config, read_secret_file(out / "secrets.yaml", config.secret_name))
    try:
        written = write(files, out)
    except OSError as exc:
        raise CliError(
            f"--out {out}: cannot write: {exc.strerror or exc}", code=EXIT_FAILED
        ) from exc
    print(f"wrote {len(written)} files to {out} (apply with: kubectl apply -k {out})")
    return 0


def _settings(args: argparse.Namespace, namespace: str | None = None) -> Any:
    from knative.platforms.kube import KubeSettings, KubeSettingsError

    try:
        return KubeSettings.from_env(
            os.environ,
            kubeconfig=args.kubeconfig,
            kube_context=args.context,
            namespace=namespace if namespace is not None else args.namespace,
            service=getattr(args, "service", None),
        )
    except KubeSettingsError as exc:
        raise CliError(str(exc)) from exc


def _api(settings: Any) -> tuple[Any, str]:
    from knative.platforms import PlatformError
    from knative.platforms.kube import api_client_for

    try:
        return api_client_for(settings)
    except PlatformError as exc:
        raise CliError(str(exc)) from exc


def run_deploy(args: argparse.Namespace) -> int:
    from knative.manifests import (
        all_objects,
        apply_objects,
        keep_live_secret,
        keep_live_traffic,
        render,
    )
    from knative.platforms import PlatformError

    config = _load(args)
    api, _ = _api(_settings(args, namespace=config.namespace))
    objects = all_objects(render(config))
    try:
        objects = keep_live_secret(api, objects, config.secret_name)
        if not args.reset_traffic:
            objects = keep_live_traffic(api, objects)
        results = apply_objects(
            api, objects, field_manager=args.field_manager, dry_run=args.dry_run
        )
    except PlatformError as exc:
        raise CliError(str(exc), code=EXIT_FAILED) from exc
    for r in results:
        print(r)
    print(f"{len(results)} objects applied{' (dry run: nothing stored)' if args.dry_run else ''}")
    return 0


def _parse_assignments(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"traffic set: {item!r} must look like NAME=PERCENT (e.g. fallback=100)")
        try:
            pct = int(value)
        except ValueError:
            raise CliError(f"traffic set: {name}: percent {value!r} is not an integer") from None
        if not 0 <= pct <= 100:
            raise CliError(f"traffic set: {name}: percent {pct} is not within 0..100")
        if name in out:
            raise CliError(f"traffic set: {name} is given twice")
        out[name] = pct
    return out


def run_traffic(args: argparse.Namespace) -> int:
    import dataclasses

    from knative.manifests import format_traffic
    from knative.platforms import PermanentPlatformError, PlatformError, Target
    from knative.platforms.kube import KnativePlatform

    words = list(args.words)
    if words and words[0] != "set":
        raise CliError(
            f"traffic: unknown action {words[0]!r} (use: surefoot traffic set NAME=PERCENT ...)"
        )
    if words == ["set"]:
        raise CliError("traffic set: give at least one NAME=PERCENT, e.g. primary=0 fallback=100")
    wanted = _parse_assignments(words[1:]) if words else None
    config = _load(argparse.Namespace(file=args.file, shape=None, namespace=None))
    env = os.environ
    settings = _settings(
        argparse.Namespace(
            kubeconfig=args.kubeconfig,
            context=args.context,
            namespace=None,
            service=args.service or env.get("SUREFOOT_SERVICE") or config.llm,
        ),
        namespace=args.namespace or env.get("SUREFOOT_NAMESPACE") or config.namespace,
    )
    api, namespace = _api(settings)
    platform = KnativePlatform(api, namespace, request_timeout=settings.request_timeout)
    try:
        if wanted is not None:
            current = platform.traffic(settings.service)
            targets: list[Target] = []
            used: set[str] = set()
            for t in current:
                key = t.tag if t.tag in wanted else t.revision if t.revision in wanted else None
                if key is not None:
                    used.add(key)
                targets.append(dataclasses.replace(t, percent=wanted[key]) if key else t)
            for name, pct in wanted.items():
                if name not in used:
                    targets.append(Target(revision=name, percent=pct))
            try:
                platform.set_traffic(settings.service, targets)
            except PermanentPlatformError as exc:
                if "sum to" in str(exc) or "within 0..100" in str(exc) or "unique" in str(exc):
                    raise CliError(f"traffic set: {exc}") from exc
                raise
        spec = [dataclasses.asdict(t) for t in platform.traffic(settings.service)]
        effect = [dataclasses.asdict(t) for t in platform.traffic_status(settings.service)]
    except PlatformError as exc:
        raise CliError(str(exc), code=EXIT_FAILED) from exc
    if args.json:
        print(
            json.dumps(
                {
                    "service": settings.service,
                    "namespace": namespace,
                    "traffic": spec,
                    "traffic_status": effect,
                },
                indent=2,
            )
        )
    else:
        print(f"service {namespace}/{settings.service}")
        print(format_traffic(spec, effect))
    return 0
