"""The pipeline: one build context, one entry function per stage, `builder build` over all of them.

`make_context` loads the model once, renders the seed once and validates it once; every stage takes
that context and returns a typed result. `builder <stage>` makes a context and calls one stage;
`builder build` makes one context and calls them all, in order, stopping at the first failure. The
stage table and build-summary.json are written on every path, failures included.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from builder import settings
from builder.errors import BuilderError, Problem, ProblemsError
from builder.model import HostModel, load_model_with_warnings
from builder.seed.render import render_host
from builder.seed.validate import Step, find_schema_dir, validate_rendered
from builder.summary import StageResult  # noqa: F401  (re-exported for commands)

if TYPE_CHECKING:
    from builder.media.iso import RemasterResult
    from builder.packer import PackerResult
    from builder.testbed.chain import StandinChain
    from builder.verify.report import Report

STAGES = ("validate", "render", "iso", "pxe", "packer", "verify")
SKIPPABLE = ("pxe", "packer", "verify")
DEMO_HINT = ("for a demo without the Ubuntu ISO: `builder standin iso --out standin.iso` and then "
             "`builder build --base standin.iso --allow-standin`")


@dataclass(frozen=True)
class BuildContext:
    """Everything the stages share, made once per invocation. Paths are absolute."""

    model: HostModel
    warnings: tuple[Problem, ...]
    seed: dict[str, bytes]  # rendered seed files, keyed by path under <out>/<host>/
    validation: tuple[Step, ...]
    out: Path
    source_date_epoch: int
    chain: StandinChain | None = None  # the offline stand-in chain: `model` is the harness model (apply_standin_chain)

    @property
    def hostname(self) -> str:
        return self.model.host.hostname

    @property
    def host_dir(self) -> Path:
        return self.out / self.hostname

    @property
    def manifest(self) -> Path:
        return self.host_dir / "manifest.json"

    @property
    def iso_path(self) -> Path:
        return self.host_dir / f"{self.hostname}-autoinstall.iso"

    def autoinstall_seed(self) -> dict[str, bytes]:
        return {name: self.seed[f"autoinstall/{name}"] for name in ("user-data", "meta-data")}


def make_context(host: Path | None, out: Path, schema_dir: Path | None = None, *, tools: bool = False,
                 say: Callable[[str], None] | None = None) -> BuildContext:
    """Check the environment, load the model, render and validate the seed: all problems at once."""
    settings.check_environment()
    model, warnings = load_model_with_warnings(host)
    for w in warnings:
        (say or _stderr)(f"builder: {w}")
    files = render_host(model)
    steps = validate_rendered(files, find_schema_dir(schema_dir), tools=tools)
    failed = [s for s in steps if s.status == "failed"]
    if failed:
        raise ProblemsError([Problem(s.name, None, "", s.detail) for s in failed], what="rendered seed")
    return BuildContext(model, tuple(warnings), files, tuple(steps), Path(out).absolute(),
                        settings.source_date_epoch(model.host.source_date_epoch))


def apply_standin_chain(ctx: BuildContext, base: BaseIso, say: Callable[[str], None] | None = None) -> BuildContext:
    """On a stand-in base ISO (`--allow-standin`): the context with the seed rendered from the harness model.

    The disk Packer installs from that ISO boots offline against the harness services, and the verify stage
    logs in with the extra admin key kept under <out>/<host>/standin-chain/ (builder.testbed.chain). Never
    for a real Ubuntu ISO (no STANDIN marker in its .disk/info). Said out loud, never silent.
    """
    from builder.media.iso import STANDIN_MARKER
    from builder.media.source import extract_info
    from builder.testbed.chain import prepare_chain

    if not base.allow_standin or base.path is None or not base.path.is_file():
        return ctx
    if STANDIN_MARKER.encode() not in extract_info(base.path.absolute()):
        return ctx
    chain = prepare_chain(ctx.model, ctx.host_dir)
    files = render_host(chain.model)
    (say or _stderr)(f"builder: {chain.note()}")
    return replace(ctx, model=chain.model, seed=files, chain=chain)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


# --- stages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderResult:
    host_dir: Path
    files: tuple[Path, ...]


def stage_validate(ctx: BuildContext) -> tuple[Step, ...]:
    """The model and the rendered seed were checked when the context was made; report the steps."""
    return ctx.validation


def stage_render(ctx: BuildContext) -> RenderResult:
    from builder.seed.artifacts import write_seed

    host_dir = write_seed(ctx.model, ctx.seed, ctx.out)
    return RenderResult(host_dir, tuple(host_dir / name for name in sorted(ctx.seed)))


@dataclass(frozen=True)
class BaseIso:
    """Where the Ubuntu live-server ISO comes from (the same options for `iso`, `pxe` and `build`)."""

    path: Path | None = None  # None: download the model's ISO into the cache
    keyring: Path | None = None
    allow_standin: bool = False
    no_pin_check: bool = False


@dataclass(frozen=True)
class IsoResult:
    iso: Path
    sha256: str
    remaster: RemasterResult


def stage_iso(ctx: BuildContext, base: BaseIso, *, replace: bool = False) -> IsoResult:
    from builder.media.fetch import cache_dir
    from builder.media.iso import RemasterSpec, remaster, write_outputs
    from builder.media.source import resolve_base
    from builder.seed.artifacts import write_seed

    out = ctx.iso_path
    if out.exists():
        if not replace:
            raise BuilderError(f"output file already exists: {out}", hint="remove it (and its .sha256) first")
        for p in (out, out.with_name(out.name + ".sha256")):
            p.unlink(missing_ok=True)  # the remaster is reproducible: same inputs, same bytes
    src = resolve_base(ctx.model, base)
    write_seed(ctx.model, ctx.seed, ctx.out)
    spec = RemasterSpec(ctx.hostname, ctx.source_date_epoch, tuple(ctx.model.os.kernel_cmdline),
                        ctx.autoinstall_seed())
    result = remaster(src.path, out, spec, allow_standin=base.allow_standin)
    digest = write_outputs(result, ctx.manifest, src.name, src.sha256, hash_cache=cache_dir())
    return IsoResult(out, digest, result)


@dataclass(frozen=True)
class PxeOptions:
    server: str | None = None
    http_port: int = 8080
    iso_url: str | None = None


def stage_pxe(ctx: BuildContext, base: BaseIso, opts: PxeOptions) -> Path:
    from builder.media.iso import check_base, list_files
    from builder.media.pxe import PxeSpec, build_bundle, update_manifest
    from builder.media.source import extract_info, resolve_base
    from builder.seed.artifacts import write_seed

    src = resolve_base(ctx.model, base)
    check_base(list_files(src.path), extract_info(src.path), src.path, base.allow_standin)
    host_dir = write_seed(ctx.model, ctx.seed, ctx.out)
    spec = PxeSpec(ctx.hostname, ctx.source_date_epoch, tuple(ctx.model.os.kernel_cmdline), ctx.autoinstall_seed(),
                   server=opts.server, http_port=opts.http_port, iso_url=opts.iso_url)
    bundle = build_bundle(src.path, host_dir / "pxe", spec)
    update_manifest(ctx.manifest, bundle, src.path, src.sha256)
    return bundle


@dataclass(frozen=True)
class PackerOptions:
    template: Path | None = None  # None: the shipped packer/prometheus.pkr.hcl
    accel: str | None = None
    timeout: float = 7200.0
    iso: Path | None = None  # None: the ISO the iso stage wrote
    validate_only: bool = False


def stage_packer(ctx: BuildContext, opts: PackerOptions) -> PackerResult | None:
    """Write the variables, validate, build. None for validate_only."""
    import tempfile

    from builder.packer import TEMPLATE, packer_build, packer_validate, write_pkrvars

    iso = (opts.iso or ctx.iso_path).absolute()
    template = (opts.template or TEMPLATE).absolute()
    if not iso.is_file():
        raise BuilderError(f"ISO not found: {iso}", hint="build it with `builder iso --base ISO` (or pass --iso FILE)")
    varfile = write_pkrvars(ctx.model, iso, ctx.out)
    if opts.validate_only:
        with tempfile.TemporaryDirectory(prefix="builder-packer-validate-") as tmp:
            # an earlier build's output folder would make `packer validate` fail: point it elsewhere
            packer_validate(varfile, template, {"output_directory": f"{tmp}/images"})
        return None
    return packer_build(ctx.model, varfile, template=template, out_root=ctx.out, accel=opts.accel,
                        timeout=opts.timeout)


@dataclass(frozen=True)
class VerifyOptions:
    seed: Path | None = None  # a seed folder to verify as given (else the context's seed)
    image: Path | None = None  # an existing stand-in image
    keep: bool = False
    only: tuple[str, ...] | None = None
    boot_timeout: float | None = None
    second_boot: bool = True  # power off and boot the same disk again, re-running SECOND_BOOT_CHECKS


@dataclass(frozen=True)
class VerifyResult:
    report: Report
    report_dir: Path


def stage_verify(ctx: BuildContext, opts: VerifyOptions,
                 on_result: Callable[..., None] | None = None) -> VerifyResult:
    """Boot the stand-in with the seed (as rendered, with only the test overrides) and run the catalog."""
    import contextlib
    import shutil
    import tempfile

    from builder.seed.artifacts import write_seed
    from builder.verify.report import write_report
    from builder.verify.session import guest_session, image_from_file, seed_source, verify_boots

    started = time.monotonic()
    if opts.seed:  # bad inputs fail before anything is created under --out
        seed_source(opts.seed.absolute())
    if opts.image:
        image_from_file(opts.image.absolute())
    host_dir = ctx.host_dir
    seed = opts.seed.absolute() if opts.seed else write_seed(ctx.model, ctx.seed, ctx.out)
    if opts.keep:
        work = host_dir / "verify-work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    else:
        host_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".verify-work-", dir=host_dir))
    try:
        _stderr(f"builder: booting {ctx.hostname} (stand-in, TCG: 1-3 min)...")
        with guest_session(ctx.model, work, seed=seed, image=opts.image.absolute() if opts.image else None,
                           keep=opts.keep, boot_timeout=opts.boot_timeout) as session:
            _stderr(f"builder: guest up {session.timings}; running checks")
            report = verify_boots(session, only=list(opts.only) if opts.only else None, on_result=on_result,
                                  started=started, second_boot=opts.second_boot,
                                  before_reboot=lambda _s: _stderr("builder: first boot checked; powering off "
                                                                   "and booting the same disk again..."))
            # the first boot's console; a second boot's is copied beside it (serial-boot2.log)
            out = write_report(report, host_dir / "verify",
                               serial_log=Path(report.serial_log) if report.serial_log else None)
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                host_dir.rmdir()  # only if the failed run left it empty
    return VerifyResult(report, out)


def packer_disk(ctx: BuildContext) -> Path:
    """The OS disk the packer stage writes (Packer's vm_name in its output folder)."""
    return ctx.host_dir / "packer" / "build" / "images" / ctx.hostname


def stage_verify_disk(ctx: BuildContext, disk: Path, identity: Path, opts: VerifyOptions,
                      on_result: Callable[..., None] | None = None) -> VerifyResult:
    """Boot a built disk by its firmware with the harness services and run the catalog (builder.verify.disk)."""
    import shutil
    import tempfile

    from builder.verify.disk import preflight_disk, verify_disk
    from builder.verify.report import write_report
    from builder.verify.targets import disk_target

    started = time.monotonic()
    preflight_disk(ctx.model, disk, identity)  # bad inputs fail before anything is created under --out
    ctx.host_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".verify-disk-", dir=ctx.host_dir))
    notes = (ctx.chain.note(),) if ctx.chain is not None else ()
    try:
        again = ", then once more for the second-boot checks" if opts.second_boot else ""
        _stderr(f"builder: booting the disk {disk} by its firmware ({ctx.model.host.firmware}; TCG: 2-6 min){again}...")
        report, serial = verify_disk(ctx.model, disk_target(disk), identity, work, only=list(opts.only) if opts.only
                                     else None, on_result=on_result, started=started,
                                     boot_timeout=opts.boot_timeout, notes=notes, second_boot=opts.second_boot)
        out = write_report(report, ctx.host_dir / "verify", serial_log=serial)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return VerifyResult(report, out)


# --- builder build --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    base: BaseIso
    skip: tuple[str, ...] = ()
    packer: PackerOptions = PackerOptions()
    pxe: PxeOptions = PxeOptions()
    verify: VerifyOptions = VerifyOptions()


def _run_stage(name: str, ctx: BuildContext, opts: BuildOptions, say: Callable[[str], None]) -> tuple[int, str]:
    """Run one stage; returns (exit code, one-line detail)."""
    if name == "validate":
        for s in stage_validate(ctx):
            say(f"  {s.name}: {s.status}")
        return 0, ""
    if name == "render":
        res = stage_render(ctx)
        say(f"  wrote {len(res.files)} seed files and manifest.json in {res.host_dir}")
        return 0, ""
    if name == "iso":
        iso = stage_iso(ctx, opts.base, replace=True)
        say(f"  wrote {iso.iso} (sha256 {iso.sha256})")
        return 0, ""
    if name == "pxe":
        say(f"  wrote {stage_pxe(ctx, opts.base, opts.pxe)}/")
        return 0, ""
    if name == "packer":
        result = stage_packer(ctx, opts.packer)
        if result is not None and not result.ok:
            return result.returncode or 2, f"packer build failed with exit code {result.returncode}"
        return 0, ""
    if name == "verify":
        from builder.verify.report import render_table

        disk = packer_disk(ctx)
        if "packer" not in opts.skip and ctx.chain is not None and disk.is_file():
            # the disk the packer stage wrote, booted by its firmware (the stand-in chain holds the login key)
            vr = stage_verify_disk(ctx, disk, ctx.chain.identity, opts.verify)
            say(f"  target: {vr.report.spec.description}, sha256 {vr.report.spec.sha256}")
        else:
            vr = stage_verify(ctx, opts.verify)
        say(render_table(vr.report))
        failed = [r for r in vr.report.results if r.status == "fail"]
        return (0, "") if vr.report.ok else (1, f"{len(failed)} check(s) failed; report in {vr.report_dir}")
    raise ValueError(name)


def run_build(ctx: BuildContext, opts: BuildOptions, say: Callable[[str], None] = print) -> list[StageResult]:
    """Every stage in order over one context; the first failure stops the rest (listed as 'not run')."""
    results: list[StageResult] = []
    stopped = False
    for i, name in enumerate(STAGES, 1):
        if stopped:
            results.append(StageResult(name, "not run", detail="an earlier stage failed"))
            continue
        if name in opts.skip:
            results.append(StageResult(name, "skipped", detail="--skip " + name))
            continue
        say(f"\n=== [{i}/{len(STAGES)}] {name}")
        started = time.monotonic()
        try:
            code, detail = _run_stage(name, ctx, opts, say)
        except BuilderError as exc:
            if name == "iso" and opts.base.path is None:
                exc = BuilderError(exc.message, hint="; ".join(h for h in (exc.hint, DEMO_HINT) if h))
            say(f"builder: error: {exc}")
            code, detail = 2, exc.message.splitlines()[0]
        except OSError as exc:
            msg = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
            say(f"builder: error: {msg}")
            code, detail = 2, msg
        seconds = time.monotonic() - started
        results.append(StageResult(name, "ok" if code == 0 else "failed", seconds, detail, code))
        stopped = code != 0
    return results
