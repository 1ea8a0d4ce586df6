"""`dinat doctor`: can dinat restore here, and how well. `dinat_cli.doctor` does the work; this prints it."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from dinat_cli.cli.app import app

# Cheap: the collectors import torch and the rest of dinat only when they run.
from dinat_cli.cpu import X86_FLAGS
from dinat_cli.doctor import Report, diagnose
from dinat_cli.process import configure_process

_GIB = 1 << 30
_STATUS_STYLE = {"present": "green", "missing": "yellow", "damaged": "red"}


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
    smoke_test: Annotated[
        bool,
        typer.Option("--smoke-test/--no-smoke-test", help="Restore a 32x32 image with a tiny network on the CPU."),
    ] = True,
) -> None:
    """Check this machine: torch, CPU kernels, devices, kernel choices, weights; exit 1 if dinat cannot restore."""
    # The smoke test and the inductor cache as the restore commands have them.
    configure_process()
    if as_json:
        # Stdout holds the JSON document and nothing else.
        with contextlib.redirect_stdout(sys.stderr):
            report = diagnose(smoke_test=smoke_test)
        typer.echo(report.to_json())
    else:
        report = diagnose(smoke_test=smoke_test)
        _print(report)
    if not report.ok:
        raise typer.Exit(1)


def _gib(size: int | None) -> str:
    return "?" if size is None else f"{size / _GIB:.1f} GiB"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _print(report: Report) -> None:
    console = Console(highlight=False, soft_wrap=True)

    def line(label: str, *parts: str | tuple[str, str], error: str | None = None) -> None:
        text = Text.assemble((f"{label}: ", "bold"), *parts)
        if error:
            text.append(f"error: {error}", style="red")
        console.print(text)

    dinat, python, torch_info = report.dinat, report.python, report.torch
    if dinat.editable:
        install = "editable install"
    elif dinat.source_tree:
        install = "source tree"
    else:
        install = "installed" if dinat.distribution else "no installed distribution"
    line("dinat", f"{dinat.version} at {dinat.path} ({install})" if not dinat.error else "", error=dinat.error)
    line(
        "python",
        f"{python.version} ({python.executable}) on {python.platform}" if not python.error else "",
        error=python.error,
    )
    if torch_info.error:
        line("torch", error=torch_info.error)
    else:
        build = f"CUDA {torch_info.cuda}" if torch_info.cuda else (f"HIP {torch_info.hip}" if torch_info.hip else "CPU")
        debug = ", debug build" if torch_info.debug else ""
        line(
            "torch",
            f"{torch_info.version} ({build} build{debug}), {torch_info.threads} threads, "
            f"CPU capability {torch_info.cpu_capability}",
        )

    cpu = report.cpu
    if cpu.error:
        line("cpu", error=cpu.error)
    else:
        flags = [name for name in X86_FLAGS if getattr(cpu, name)]
        bf16 = {True: "yes", False: "no", None: "unknown"}[cpu.native_bf16]
        line(
            "cpu",
            f"{cpu.model or 'unknown model'}, {cpu.architecture}, {cpu.logical_cores} logical cores"
            f" ({cpu.usable_cores} usable); {' '.join(flags) or 'no x86 extensions'}; native bfloat16: {bf16}",
        )

    kernels = report.cpu_kernels
    if kernels.reason is None:
        kernels_text = Text(
            f"cpu kernels: {kernels.variant} (runnable: {', '.join(kernels.variants_runnable)})", style="bold green"
        )
    else:
        kernels_text = Text(f"cpu kernels: none - {kernels.reason}", style="bold red")
    console.print(kernels_text)

    memory = report.memory
    line(
        "memory",
        f"{_gib(memory.free)} available of {_gib(memory.total)}" if not memory.error else "",
        error=memory.error,
    )
    for device in report.devices:
        if device.error:
            line(f"device {device.name}", error=device.error)
        elif device.name != "cpu":
            capability = f", compute capability {device.capability}" if device.capability else ""
            line(
                f"device {device.name}",
                f"{device.description}, {_gib(device.total_memory)} ({_gib(device.free_memory)} free){capability}",
            )
    for attention in report.attention:
        if attention.error:
            line(f"attention on {attention.device}", error=attention.error)
            continue
        others = "; ".join(
            f"{name}: {reason or 'available'}" for name, reason in attention.backends.items() if name != attention.auto
        )
        line(f"attention on {attention.device}", (f"{attention.auto}", "bold"), f" (others: {others})")
        line(f"kernels on {attention.device}", f"{attention.kernels} (--attention auto)")

    compiler = report.compiler
    if compiler.path:
        line(
            "c++ compiler",
            f"{compiler.path}: {compiler.version or '?'} (needed for {compiler.needed_for})",
            error=compiler.error,
        )
    else:
        line("c++ compiler", f"none on PATH (needed for {compiler.needed_for})", error=compiler.error)
    ray = report.ray
    line("ray", (ray.version if ray.installed else "not installed (needed for --ray only)"), error=ray.error)
    for cache in report.caches:
        state = f"{cache.path} ({_mb(cache.size)})" if cache.exists else f"{cache.path} (not created yet)"
        line(f"{cache.name} cache", state if not cache.error else "", error=cache.error)

    weights = report.weights
    if weights.error:
        line("weights", error=weights.error)
    else:
        parts: list[str | tuple[str, str]] = []
        for index, entry in enumerate(weights.entries):
            status = entry["status"]
            parts += [", " if index else "", f"{entry['name']} ", (status, _STATUS_STYLE.get(status, ""))]
        line("weights", *parts)

    smoke = report.smoke_test
    if not smoke.ran:
        line("smoke test", ("skipped", "yellow"))
    elif smoke.ok:
        line(
            "smoke test",
            ("ok", "green"),
            f": a tiny network restored {smoke.size} in {smoke.seconds:.2f} s ({smoke.kernels})",
        )
    else:
        line("smoke test", ("failed", "bold red"), " ", error=smoke.error)

    if report.advice:
        console.print(Text("advice:", style="bold"))
        for advice in report.advice:
            console.print(Text(f"  - {advice}"))
    if report.ok:
        console.print(Text("dinat can restore on this machine.", style="bold green"))
    else:
        console.print(Text("dinat cannot restore on this machine (see above).", style="bold red"))
