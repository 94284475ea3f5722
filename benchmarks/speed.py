"""Speed benchmark: the seed workflow and the project's training side by side, the fast98 preset, the flow.

    python benchmarks/speed.py --mirror /work/shared/data/mnist [--device auto] [--epochs 3] [--rounds 1]

Section 1 alternates, in this one process on one device, the seed tutorial's loop and the project's
train_model at identical settings (batch 64, plain SGD lr 0.01, same epochs) and reports seconds per epoch
(median of the measured epochs), test accuracy, peak host RSS and peak GPU memory, and the ratio seed/project.
Section 2 times the fast98 preset (on CUDA also: CUDA graph vs torch.compile vs eager, fp32 vs bf16).
Section 3 runs the whole flow against a running Prefect server (started here unless --api-url is given):
orchestration overhead = flow wall time - the sum of the stages' own seconds.
Writes JSON (--out) and a markdown table (--table). A benchmark, not a test: nothing fails on a timing.
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from compiled_step import compile_step
from seed_workflow import test_accuracy_seed, torchvision_root, train_seed

from launch.server import running_server
from mnist_core.config import RunParams
from mnist_core.data.download import download_dataset
from mnist_core.data.idx import CLASS_NAMES
from mnist_core.data.prepare import load_prepared, prepare_dataset
from mnist_core.evaluation.evaluate import evaluate_model
from mnist_core.training.device import resolve_device
from mnist_core.training.loop import train_model

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLEAR_REFS = Path("/proc/self/clear_refs")


# --- measurement helpers -------------------------------------------------------------------------------------
def reset_peaks(device: torch.device) -> None:
    """Reset the peak RSS (Linux: '5' to clear_refs sets VmHWM to the current RSS) and the CUDA peak."""
    # Where this fails, peak_rss_mb falls back to the process-lifetime peak and says so in its result.
    with contextlib.suppress(OSError):
        CLEAR_REFS.write_text("5")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_mb() -> tuple[float, str]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM since reset"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss (process lifetime)"


def peak_gpu_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def hardware(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores_available": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def project_data(data_dir: Path, mirror: str, params: RunParams, device: torch.device) -> dict[str, torch.Tensor]:
    downloaded = download_dataset(params.dataset, data_dir, [mirror])
    return load_prepared(prepare_dataset(downloaded, data_dir, params.val_size, params.seed).path, device)


def run_project(data: dict[str, torch.Tensor], params: RunParams, device: torch.device, **kwargs: Any) -> dict:
    reset_peaks(device)
    result = train_model(data, params, device, **kwargs)
    test = evaluate_model(result.model, data["test_images"], data["test_labels"], CLASS_NAMES[params.dataset])
    rss, rss_kind = peak_rss_mb()
    return {
        "epoch_seconds": [stats.seconds for stats in result.history],
        "train_seconds": result.train_seconds,
        "setup_seconds": result.setup_seconds,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.history[result.best_epoch - 1].val_accuracy,
        "test_accuracy": test.accuracy,
        "peak_rss_mb": rss,
        "peak_rss_kind": rss_kind,
        "peak_gpu_mb": peak_gpu_mb(device),
        "step_kind": f"{result.step_kind}, {result.gradients}" + (" + torch.compile" if kwargs.get("capture") else ""),
        "precision": result.precision,
    }


def run_seed(root: Path, device: torch.device, epochs: int, seed: int) -> dict:
    reset_peaks(device)
    model, seconds = train_seed(root, device, epochs, seed=seed)
    accuracy = test_accuracy_seed(model, root, device)
    rss, rss_kind = peak_rss_mb()
    return {
        "epoch_seconds": seconds,
        "train_seconds": sum(seconds),
        "test_accuracy": accuracy,
        "peak_rss_mb": rss,
        "peak_rss_kind": rss_kind,
        "peak_gpu_mb": peak_gpu_mb(device),
    }


# --- section 1: seed vs project ------------------------------------------------------------------------------
def compare(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    root = torchvision_root(args.data_dir, args.mirror)
    params = RunParams(preset="seed", epochs=args.epochs, seed=args.seed, precision=args.precision,
                       device=str(device))  # fmt: skip
    data = project_data(args.data_dir, args.mirror, params, device)
    # The project at its defaults, then what each default buys, measured in the same run: on a CPU the
    # written-out gradients (against autograd's, what the project ran before them); on CUDA the precision (auto is
    # fp32; bf16 takes autograd's gradients) and the CUDA graph (against the same step run eagerly).
    variants: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {"project": ({}, {})}
    if device.type == "cuda":
        variants["project, bf16"] = ({"precision": "bf16"}, {})
        variants["project, no graph"] = ({"cuda_graph": False}, {})
    else:
        variants["project, autograd"] = ({}, {"gradients": "autograd"})
    runs: dict[str, list[dict]] = {"seed": [], **{name: [] for name in variants}}
    for round_number in range(args.rounds):
        # Alternate the order, so a slow spell on a shared machine hits every side alike.
        order = list(runs) if round_number % 2 == 0 else list(reversed(runs))
        for side in order:
            print(f"[compare] round {round_number + 1}/{args.rounds}: {side} ({args.epochs} epochs)", flush=True)
            if side == "seed":
                runs[side].append(run_seed(root, device, args.epochs, args.seed + round_number))
                continue
            overrides, kwargs = variants[side]
            seeded = params.model_copy(update={"seed": args.seed + round_number, **overrides})
            runs[side].append(run_project(data, seeded, device, **kwargs))
    summary: dict[str, Any] = {"settings": {"batch_size": 64, "optimizer": "sgd", "lr": 0.01, "epochs": args.epochs,
                                            "rounds": args.rounds}}  # fmt: skip
    for side, results in runs.items():
        epochs = [seconds for result in results for seconds in result["epoch_seconds"]]
        samples = 60_000 if side == "seed" else 60_000 - params.val_size
        median = statistics.median(epochs)
        summary[side] = {
            "epoch_seconds_median": median,
            "samples_per_epoch": samples,
            "samples_per_second": samples / median,
            "test_accuracy": statistics.mean(r["test_accuracy"] for r in results),
            "test_accuracies": [r["test_accuracy"] for r in results],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "peak_rss_kind": results[0]["peak_rss_kind"],
            "peak_gpu_mb": results[0]["peak_gpu_mb"] and max(r["peak_gpu_mb"] for r in results),
            "step_kind": results[0].get("step_kind", "DataLoader, autograd"),
            "precision": results[0].get("precision", "fp32"),
            "runs": results,
        }
    seed_epoch = summary["seed"]["epoch_seconds_median"]
    summary["ratios_per_epoch"] = {side: seed_epoch / summary[side]["epoch_seconds_median"] for side in variants}
    summary["ratio_per_epoch"] = summary["ratios_per_epoch"]["project"]
    # The project trains on 55 000 images (5 000 held out for validation), the seed on 60 000: per sample too.
    summary["ratio_per_sample"] = summary["project"]["samples_per_second"] / summary["seed"]["samples_per_second"]
    return summary


# --- section 2: the fast98 preset ----------------------------------------------------------------------------
def preset(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = [("default", {}, {})]
    if device.type == "cpu":
        variants.append(("autograd", {}, {"gradients": "autograd"}))
    if device.type == "cuda":
        variants += [
            ("cuda_graph fp32", {"precision": "fp32"}, {"step_kind": "cuda_graph"}),
            ("cuda_graph bf16", {"precision": "bf16"}, {"step_kind": "cuda_graph"}),
            # torch.compile of the step as it was measured against the graph: autograd's gradients.
            (
                "compiled fp32",
                {"precision": "fp32"},
                {"step_kind": "fixed_shape", "capture": compile_step, "gradients": "autograd"},
            ),
            ("eager fp32", {"precision": "fp32"}, {"step_kind": "fixed_shape"}),
        ]
    shown = {"epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule", "label_smoothing"}
    fast98 = RunParams(preset="fast98").model_dump(mode="json", include=shown)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    # Seed-major: each seed's split is loaded once and used by every variant (training only reads it).
    for seed in args.preset_seeds:
        split = RunParams(preset="fast98", seed=seed, device=str(device))  # the variants change no data setting
        data = project_data(args.data_dir, args.mirror, split, device)
        for name, overrides, kwargs in variants:
            params = RunParams(preset="fast98", seed=seed, device=str(device), **overrides)
            print(f"[preset] {name}, seed {seed}", flush=True)
            try:
                rows[name].append(run_project(data, params, device, **kwargs))
            except Exception as error:  # noqa: BLE001 - one failing variant (e.g. compile) must not hide the rest
                rows[name].append({"error": f"{type(error).__name__}: {error}"})
        del data  # freed before the next seed's split is loaded: one split resident at a time, as before
    results: dict[str, Any] = {}
    for name, runs in rows.items():
        ok = [row for row in runs if "error" not in row]
        results[name] = {"runs": runs, "params": dict(fast98)}
        if ok:
            accuracies = [row["test_accuracy"] for row in ok]
            results[name].update(
                test_accuracy_mean=statistics.mean(accuracies),
                test_accuracy_std=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                train_seconds_median=statistics.median(row["train_seconds"] for row in ok),
                setup_seconds_median=statistics.median(row["setup_seconds"] for row in ok),
                step_kind=ok[0]["step_kind"],
                peak_gpu_mb_max=None if ok[0]["peak_gpu_mb"] is None else max(row["peak_gpu_mb"] for row in ok),
                precision=ok[0]["precision"],
            )
    return results


# --- section 3: the flow against a running server ------------------------------------------------------------
def flow(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mnist-bench-flow-"))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    with contextlib.ExitStack() as stack:
        if args.api_url:
            env["PREFECT_API_URL"] = args.api_url
        else:
            print("[flow] starting a Prefect server", flush=True)
            env["PREFECT_HOME"] = str(work / "prefect-home")
            env["PREFECT_API_URL"] = stack.enter_context(running_server(work / "prefect-home", env))
        probes, process = run_flows(args, device, env, work)
    overheads = [probe["orchestration_overhead_seconds"] for probe in probes]
    return {
        "server": args.api_url or "started by the benchmark",
        "runs": probes,
        # The first run also fills the data caches; the median over runs is the per-run figure.
        "orchestration_overhead_seconds_median": statistics.median(overheads),
        "flow_seconds_median": statistics.median(probe["flow_seconds"] for probe in probes),
        "stage_sum_seconds_median": statistics.median(probe["stage_sum_seconds"] for probe in probes),
        "peak_rss_mb_max": max(probe["peak_rss_mb"] for probe in probes),
        "flows_mnist_py": process,
    }


def run_flows(
    args: argparse.Namespace, device: torch.device, env: dict[str, str], work: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`args.flow_runs` probed runs of the flow, then one `python flows/mnist.py`, against env's PREFECT_API_URL."""
    flags = ["--preset", "fast98", "--device", str(device), "--mirror", args.mirror,
             "--data-dir", str(args.data_dir.resolve()), "--output-dir", str(work / "runs")]  # fmt: skip
    probes = []
    for number in range(args.flow_runs):
        print(f"[flow] run {number + 1}/{args.flow_runs} (benchmarks/flow_probe.py)", flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(PROJECT_ROOT / "benchmarks" / "flow_probe.py"), *flags],
                              env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - started
        lines = [line for line in done.stdout.splitlines() if line.startswith("FLOW_PROBE ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"flow probe failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        probes.append({**json.loads(lines[-1].removeprefix("FLOW_PROBE ")), "process_wall_seconds": wall})
    print("[flow] python flows/mnist.py", flush=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "flows" / "mnist.py"), *flags], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True)  # fmt: skip
    return probes, {"returncode": done.returncode, "process_wall_seconds": time.perf_counter() - started}


# --- report --------------------------------------------------------------------------------------------------
def fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def table(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    where = f"{hw.get('gpu', hw['cpu'])} ({hw['device']}; {hw['cpu_cores_available']} CPU cores, torch {hw['torch']})"
    lines = [f"Hardware: {where}", ""]
    if "compare" in report:
        c = report["compare"]
        s = c["settings"]
        lines += [
            f"Seed workflow vs project, batch {s['batch_size']}, SGD lr {s['lr']}, {s['epochs']} epochs x "
            f"{s['rounds']} round(s), alternated in one process:",
            "",
            "| side | step, precision | s/epoch (median) | samples/s | test acc | peak RSS (MB) | peak GPU (MB) |",
            "|---|---|---|---|---|---|---|",
        ]
        sides = ["seed", *c["ratios_per_epoch"]]
        for side in sides:
            row = c[side]
            lines.append(
                f"| {side} | {row['step_kind']}, {row['precision']} | {row['epoch_seconds_median']:.3f} | "
                f"{row['samples_per_second']:,.0f} | {row['test_accuracy']:.2%} | {row['peak_rss_mb']:.0f} | "
                f"{fmt(row['peak_gpu_mb'], '{:.0f}')} |"
            )
        others = ", ".join(f"{side} {ratio:.1f}x" for side, ratio in c["ratios_per_epoch"].items() if side != "project")
        lines += ["", f"Ratio seed/project: {c['ratio_per_epoch']:.1f}x per epoch, "
                      f"{c['ratio_per_sample']:.1f}x per training sample; per epoch, {others}", ""]  # fmt: skip
    if "preset" in report:
        lines += ["fast98 preset (seeds " + ", ".join(map(str, report["preset_seeds"])) + "):", "",
                  "| variant | step | precision | test acc (mean ± std) | train s (median) | warm-up+capture s "
                  "| peak GPU (MB) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, row in report["preset"].items():
            if "test_accuracy_mean" not in row:
                lines.append(f"| {name} | failed | | {row['runs'][0].get('error', '')[:80]} | | | |")
                continue
            lines.append(
                f"| {name} | {row['step_kind']} | {row['precision']} | {row['test_accuracy_mean']:.2%} ± "
                f"{row['test_accuracy_std']:.2%} | {row['train_seconds_median']:.2f} | "
                f"{row['setup_seconds_median']:.2f} | {fmt(row['peak_gpu_mb_max'], '{:.0f}')} |"
            )
        lines.append("")
    if "flow" in report:
        f = report["flow"]
        lines += [
            f"Whole flow (--preset fast98) against a running Prefect server, per run (median of {len(f['runs'])}):",
            "",
            "| flow wall s | stages' own s | orchestration overhead s | flow peak RSS (MB) | "
            "`python flows/mnist.py` process wall s |",
            "|---|---|---|---|---|",
            f"| {f['flow_seconds_median']:.2f} | {f['stage_sum_seconds_median']:.2f} | "
            f"{f['orchestration_overhead_seconds_median']:.2f} | {f['peak_rss_mb_max']:.0f} | "
            f"{fmt(f['flows_mnist_py'].get('process_wall_seconds'))} |",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True, help="MNIST mirror (folder or URL)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="project precision in section 1")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per side in section 1")
    parser.add_argument("--rounds", type=int, default=1, help="seed/project alternations in section 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--flow-runs", type=int, default=2)
    parser.add_argument("--api-url", help="a running Prefect server's API URL; default: start one")
    parser.add_argument("--sections", nargs="+", choices=["compare", "preset", "flow"],
                        default=["compare", "preset", "flow"])  # fmt: skip
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/speed-<device>.json)")
    parser.add_argument("--table", type=Path, help="markdown table output (default: beside the JSON)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    out = args.out or PROJECT_ROOT / "benchmarks" / "results" / f"speed-{device.type}.json"
    report: dict[str, Any] = {"hardware": hardware(device), "preset_seeds": args.preset_seeds,
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    for section in args.sections:
        report[section] = {"compare": compare, "preset": preset, "flow": flow}[section](args, device)
        # Written after every section: a run stopped at a time limit keeps what it measured.
        out.write_text(json.dumps(report, indent=1))
        text = table(report)
        (args.table or out.with_suffix(".md")).write_text(text + "\n")
    print("\n" + text)
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
