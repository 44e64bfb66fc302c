"""The ``edgeq`` command: a thin click layer over edgeq.api, one function per command."""
from __future__ import annotations

import functools
import json
import sys

import click

from . import __version__
from .errors import EdgeqError
from .target import DEFAULT_TARGET


def _emit(result: dict, as_json: bool, human) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        human(result)


def command(fn):
    """Shared --json flag, progress control and the one-sentence error contract (exit 2)."""
    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
    @functools.wraps(fn)
    def wrapper(*args, as_json: bool = False, **kwargs):
        from . import ui
        ui.set_progress(not as_json)
        try:
            return fn(*args, as_json=as_json, **kwargs)
        except EdgeqError as exc:
            if as_json:
                click.echo(json.dumps({"error": str(exc)}))
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
    return wrapper


def host_option(fn):
    """--host for targets reached over SSH (rpi4-ort, rpi5-ort, a YAML file with reach: ssh)."""
    @click.option("--host", "hosts", multiple=True,
                  help="USER@HOST[:PORT] of the device an SSH target (rpi4-ort, …) runs on, reached with your "
                       "OpenSSH keys, agent and known_hosts; TARGET=USER@HOST for one target of several.")
    @functools.wraps(fn)
    def wrapper(*args, hosts=(), **kwargs):
        from .target import bind_hosts
        bind_hosts(hosts)
        return fn(*args, **kwargs)
    return wrapper


def model_options(fn):
    for option in reversed([
        click.option("--weights", type=click.Path(dir_okay=False), help="state_dict file (loaded weights_only)."),
        click.option("--num-classes", type=int, help="Classifier size for timm models."),
        click.option("--in-chans", type=int, help="Input channels for timm models."),
        click.option("--input-shape", help="Input shape such as 1x3x224x224, comma-separated for several inputs "
                                           "(default: from zoo/timm config or the factory's edgeq_input_shape)."),
        click.option("--dynamic", help="A variable axis of the first input besides the batch, AXIS:MIN..MAX "
                                       "(e.g. 3:32..1280 for an NCHW width); calibration samples may then differ "
                                       "in length."),
        click.option("--trust-pickle", is_flag=True, help="Allow checkpoints that need full unpickling."),
    ]):
        fn = option(fn)
    return fn


def metric_options(fn):
    """--metric and what the CTC metrics need; the choice becomes an api.MetricChoice."""
    for option in reversed([
        click.option("--metric", help="top1, top5, cosine, sqnr, ctc-cer, ctc-wer, ctc-seq, ctc-agreement, or a "
                                      "function file.py:fn / module:fn taking (outputs, labels) -> float "
                                      "(default: top1 for class labels, the data set's own for the zoo)."),
        click.option("--charset", type=click.Path(), help="ctc metrics: one symbol per line, the blank excluded."),
        click.option("--blank", default=0, show_default=True, type=int, help="ctc metrics: the blank class index."),
        click.option("--labels", help="Labels stored apart from the inputs: file.npz:KEY, file.npy or lines.txt."),
    ]):
        fn = option(fn)
    return fn


def _metric_choice(metric, charset, blank):
    from .api import MetricChoice
    return MetricChoice(metric, charset, blank) if metric else None


@click.group()
@click.version_option(__version__, prog_name="edgeq")
def main():
    """edgeq: quantize, export and profile hybrid CNN+Transformer models for edge devices."""


@main.command()
@click.option("--model", "model", required=True,
              help="zoo:NAME, timm:NAME, path/to/file.py:factory, package.module:factory or file.pt2.")
@model_options
@click.option("--calib", default="zoo", show_default=True,
              help="Image folder, file.npy, file.npz[:key], or 'zoo' (bundled Fashion-MNIST subset).")
@click.option("--calib-size", type=int, help="Calibration samples to use (default: the recipe's, 256).")
@click.option("--batch-size", type=int, help="Calibration and reconstruction batch size (default: the recipe's).")
@click.option("--recipe", default="w8a8", show_default=True,
              help="w8a8, w6a6, w4a8 (block reconstruction), w8a8-fast, w8a8-minmax (observers only), "
                   "or a .yaml/.json file.")
@click.option("--iters", type=int, help="Reconstruction iterations per block (default: the recipe's).")
@click.option("--time-budget", type=float, help="Seconds of block learning, spent on the blocks whose observer-only "
                                               "output error is worth it, most harmful first; a block stops when "
                                               "its hard-rounded loss does not move (default: the recipe's; w8a8: 15). "
                                               "0: learn every block for every iteration (thorough, slow).")
@click.option("--weight-lr", type=float, help="AdaRound learning rate (default: the recipe's).")
@click.option("--act-lr", type=float, help="Activation step-size learning rate (default: the recipe's).")
@click.option("--drop-prob", type=float, help="QDrop probability (default: the recipe's, 0.5).")
@click.option("--device", default="cpu", show_default=True, help="Where reconstruction runs: cpu or cuda[:N].")
@click.option("--resume", is_flag=True, help="Continue an interrupted reconstruction from its saved state.")
@click.option("--max-drop", type=float, help="Accuracy budget: the drop of --metric on --eval, in its units (top-1 "
                                             "percentage points by default); the most sensitive units go back to "
                                             "float until it holds.")
@click.option("--min-cosine", type=float, help="Accuracy budget without labels: output cosine vs float on --eval "
                                               "(or the calibration data).")
@click.option("--eval", "eval_data", help="Held-out data for the budget: zoo:test, an image folder, .npy or .npz.")
@click.option("--eval-size", default=2000, show_default=True, type=int, help="Evaluation samples the budget uses.")
@click.option("--target", "targets", multiple=True,
              help=f"Device target whose measured latency decides the int8/float placement (default "
                   f"{DEFAULT_TARGET}): a name from targets/ (x86-cpu-ort, x86-cpu-openvino, …; ort-cpu and "
                   f"openvino-cpu still work) or a target YAML file. Repeat it for a placement per target in one "
                   f"bundle (the first is the default); edgeq export --target T applies T's.")
@click.option("--no-latency-search", is_flag=True, help="Keep every unit the recipe quantizes in int8 (no timing).")
@click.option("--placement-from", type=click.Path(), help="Apply the placements of another bundle (or its JSON) "
                                                          "instead of searching, e.g. ones searched at the "
                                                          "deployment resolution.")
@metric_options
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Replace an existing output (and discard a saved interrupted run).")
@command
@host_option
def quantize(model, weights, num_classes, in_chans, input_shape, dynamic, trust_pickle, calib, calib_size,
             batch_size, recipe, iters, time_budget, weight_lr, act_lr, drop_prob, device, resume, max_drop,
             min_cosine, eval_data, eval_size, targets, no_latency_search, placement_from, metric, charset, blank,
             labels, out, seed, force, as_json):
    """Quantize a model into a self-describing .edgeq bundle."""
    from . import api
    result = api.quantize(model, calib, recipe, out, weights=weights, num_classes=num_classes,
                          in_chans=in_chans, input_shape=input_shape, trust_pickle=trust_pickle,
                          seed=seed, calib_size=calib_size, batch_size=batch_size, iters=iters,
                          weight_lr=weight_lr, act_lr=act_lr, drop_prob=drop_prob, device=device,
                          resume=resume, force=force, max_drop=max_drop, min_cosine=min_cosine,
                          eval_data=eval_data, eval_size=eval_size, target=list(targets),
                          latency_search=False if no_latency_search else None, placement_from=placement_from,
                          dynamic=dynamic, metric=_metric_choice(metric, charset, blank), labels=labels,
                          time_budget=time_budget)
    _emit(result, as_json, _print_quantize)


def _print_quantize(r: dict) -> None:
    recon = r.get("reconstruction")
    learned = (f", {recon['regions']} blocks reconstructed on {recon['device']} in {recon['seconds']} s"
               + (f" ({len(recon['fallbacks'])} fell back to observers)" if recon["fallbacks"] else "")
               if recon else "")
    on = f" on {r['fallback']['target']}" if r["fallback"].get("target") else ""
    click.echo(f"wrote {r['bundle']} ({r['recipe']}): {r['quantized_layers']} quantized layers, "
               f"{r['float_layers']} float{on}, {r['batchnorm_folded']} BatchNorms folded{learned}; "
               f"{r['ptq_seconds']} s in total")
    click.echo(f"fake-quant vs float on calibration samples: cosine {r['fidelity_fakequant_vs_float']['cosine']}, "
               f"top-1 agreement {r['fidelity_fakequant_vs_float']['top1_agreement']}")
    fb = r["fallback"]
    if fb["units"]:
        parts = [f"{fb['reverted_units']} of {fb['units']} units in float"]
        if fb["outliers"]:
            parts.append(f"{fb['outliers']} for outlier blocks")
        if fb["budget"]:
            parts.append(f"budget {fb['budget']} {'met' if fb['budget_met'] else 'MISSED'}")
        click.echo("fallback: " + "; ".join(parts) + " (every decision is in manifest.json)")
        for target, placed in (fb.get("placements") or {}).items():
            click.echo(f"placement on {target}: {placed['float_units']} units float; {placed['verdict']}")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--to", "to", default=None, help="Export form: onnx (default), tensorrt or coreml.")
@click.option("--target", default=None, help="Device target (targets/ name or YAML): exports the form and precision "
                                             "it runs, with the bundle's latency placement for it.")
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="File (onnx), folder (tensorrt) or NAME.mlpackage (coreml) to write.")
@click.option("--precision", default=None,
              help="onnx: int8 (default), fp16, fp32; coreml: w8a8 (default), w8, fp16; tensorrt: int8.")
@click.option("--opset", default=18, show_default=True, type=int)
@click.option("--dynamic-batch", is_flag=True, help="onnx: symbolic batch axis (checked by running batch 2+).")
@click.option("--simplify", is_flag=True, help="onnx: simplify with onnxslim (kept only if outputs match).")
@click.option("--compute-units", default="ALL", show_default=True,
              type=click.Choice(["ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"]), help="coreml only.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@command
def export(bundle, to, target, out, precision, opset, dynamic_batch, simplify, compute_units, force, as_json):
    """Export a quantized bundle and check its fidelity against the torch model."""
    from . import api
    result = api.export(bundle, to, out, precision=precision, opset=opset, force=force, target=target,
                        compute_units=compute_units, dynamic_batch=dynamic_batch, simplify=simplify)
    _emit(result, as_json, _print_export)


def _print_export(r: dict) -> None:
    extra = f", opset {r['opset']}" if "opset" in r else f", compute units {r.get('compute_units')}"
    click.echo(f"wrote {r['path']} ({r['format']}, {r['precision']}, {r['bytes'] / 1e6:.2f} MB{extra})")
    fid = r["fidelity_vs_torch"]
    if fid.get("verifiable") is False:
        click.echo(f"fidelity: {fid['reason']}")
    else:
        click.echo(f"fidelity vs {fid['reference']}: max abs diff {fid['max_abs_diff']:.3g}, cosine "
                   f"{fid['cosine']}, top-1 agreement {fid['top1_agreement']}")
    if "mil_ops" in r:
        ops = r["mil_ops"]
        click.echo(f"ML program: {ops.get('quantize', 0)} quantize, {ops.get('dequantize', 0)} dequantize, "
                   f"{ops.get('constexpr_affine_dequantize', 0)} int8 constants; compute ops "
                   f"{r['mil_op_dtypes']}")
    if r.get("placement_note"):
        click.echo(f"note: {r['placement_note']}")
    if "engine" in r:
        engine = r["engine"]
        click.echo(f"engine: {engine['path']}" if engine["built"] else f"engine not built: {engine['reason']}")
        if not engine["built"]:
            click.echo(f"  {r['trtexec']}")


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--target", default="tensorrt", show_default=True, help="Runtime whose rules to check.")
@command
def check(artifact, target, as_json):
    """Lint an ONNX file for a target: nodes it would reject or fail to fuse (exit 1 when any)."""
    from . import api
    result = api.check(artifact, target)
    _emit(result, as_json, _print_check)
    if result["findings"]:
        sys.exit(1)


def _print_check(r: dict) -> None:
    click.echo(f"{r['artifact']}: {r['nodes']} nodes, {r['errors']} errors, {r['warnings']} warnings "
               f"for {r['target']}")
    for f in r["findings"]:
        click.echo(f"  {f['severity']:7} {f['rule']:24} {f['node']} ({f['op']}): {f['message']}\n"
                   f"          fix: {f['fix']}")


@main.command()
@click.argument("model")
@model_options
@click.option("--sensitivity", is_flag=True, help="Quantize in memory and rank units and blocks by the output "
                                                   "error each one causes (SQNR, KL; top-1 with labelled --eval).")
@click.option("--calib", default="zoo", show_default=True, help="Calibration data for --sensitivity.")
@click.option("--calib-size", type=int, help="Calibration samples for --sensitivity (default: the recipe's).")
@click.option("--recipe", default="w8a8-fast", show_default=True, help="Recipe whose quantizers are judged.")
@click.option("--eval", "eval_data", help="Judge on this data instead of the calibration set (labels add top-1).")
@click.option("--eval-size", default=2000, show_default=True, type=int)
@command
def inspect(model, weights, num_classes, in_chans, input_shape, dynamic, trust_pickle, sensitivity, calib,
            calib_size, recipe, eval_data, eval_size, as_json):
    """Show the block map (stem/conv/bridge/attention/mlp/head), params, MACs and quantizable ops."""
    from . import api
    result = api.inspect(model, weights=weights, num_classes=num_classes, in_chans=in_chans,
                         input_shape=input_shape, trust_pickle=trust_pickle, sensitivity=sensitivity,
                         calib=calib, calib_size=calib_size, recipe=recipe, eval_data=eval_data,
                         eval_size=eval_size, dynamic=dynamic)
    _emit(result, as_json, _print_inspect)


def _print_inspect(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    shape = "x".join(map(str, r["input"]["shape"]))
    console.print(f"[bold]{r['model']}[/] input {shape}, {r['total_params'] / 1e6:.2f} M params, "
                  f"{r['total_macs'] / 1e6:.1f} M MACs, {r['batchnorm_folded']} BatchNorms folded")
    table = Table("block", "kind", "layers", "params", "MMACs")
    for b in r["blocks"]:
        kind = b["kind"] + (" · bridge candidate" if b.get("bridge_candidate") and b["kind"] != "bridge" else "")
        table.add_row(b["name"], kind, str(len(b["layers"])), f"{b['params']:,}", f"{b['macs'] / 1e6:.2f}")
    console.print(table)
    if any(b.get("bridge_candidate") for b in r["blocks"]):
        console.print("bridge candidate: a convolution next to a transformer unit (conv→attention transitions, "
                      "where hybrids lose accuracy); shown for review, quantized by its kind")
    ops = Table("op", "count", "quantized", "how")
    for op, info in r["quantizable_ops"].items():
        ops.add_row(op, str(info["count"]), "yes" if info["quantized"] else "no", info["how"])
    console.print(ops)
    if "sensitivity" in r:
        _print_sensitivity(console, r["sensitivity"])


def _print_sensitivity(console, s: dict) -> None:
    from rich.table import Table
    full = s["all_quantized"]
    console.print(f"[bold]sensitivity[/] ({s['recipe']}, {s['samples']} samples of {s['data']}): everything "
                  f"quantized: SQNR {full['sqnr_db']} dB, KL {full['kl']}"
                  + (f", top-1 drop {full['top1_drop_pp']} pp" if "top1_drop_pp" in full else ""))
    for what, rows, label in (("units", s["units"], "unit"), ("blocks", s["blocks"], "block")):
        table = Table(label, "kind", "layers", "only this quantized: SQNR dB / KL",
                      "only this float: SQNR dB / KL", title=f"{what}, most sensitive first")
        for row in rows:
            q, f = row["only_quantized"], row["only_float"]
            members = row.get("layers") or row.get("units")
            table.add_row(row.get("unit") or row["block"], row["kind"], str(len(members)),
                          _sens_cell(q), _sens_cell(f))
        console.print(table)


def _sens_cell(m: dict) -> str:
    cell = f"{m['sqnr_db']:.2f} / {m['kl']:.2e}"
    return cell + (f" / {m['top1_drop_pp']:+.2f} pp" if "top1_drop_pp" in m else "")


@main.command(name="eval")
@click.argument("artifact", type=click.Path())
@click.option("--data", default="zoo:test", show_default=True,
              help="Image folder (class subfolders give labels), file.npz with x/y, file.npy, zoo:test.")
@click.option("--limit", type=int, help="Evaluate only the first N samples.")
@click.option("--reference", type=click.Path(), help="FP32 ONNX to compare outputs with (default: the bundle's).")
@click.option("--threads", type=int, help="Runtime threads (default: the runtime's).")
@click.option("--target", help=f"Device target whose runtime runs the artifact (a targets/ name or YAML file; default "
                               f"{DEFAULT_TARGET}); for a bundle, whose latency placement its fake-quant model takes "
                               f"(default: the bundle's default target's).")
@metric_options
@command
def eval_cmd(artifact, data, limit, reference, threads, target, metric, charset, blank, labels, as_json):
    """A metric of an exported artifact run by a target's runtime (top-1 for class labels), and fidelity vs FP32."""
    from . import api
    result = api.evaluate(artifact, data, limit=limit, reference=reference, threads=threads,
                          metric=_metric_choice(metric, charset, blank), labels=labels, target=target)
    _emit(result, as_json, _print_eval)


def _print_eval(r: dict) -> None:
    lines = [f"{r['artifact']} on {r['data']} ({r['samples']} samples, {r['seconds']} s)"
             + (f", torch fake-quant with the placement of {r['placement_of']}" if "placement_of" in r else "")]
    if "metric" in r:
        m = r["metric"]
        unit = {"pp": " %"}.get(m["unit"], f" {m['unit']}" if m["unit"] else "")
        lines.append(f"{m['name']} {m['value']}{unit}" + (
            f" (FP32 {m['fp32']}{unit}, drop {m['drop']})" if "fp32" in m else ""))
    if "vs_fp32" in r:
        v = r["vs_fp32"]
        per_output = v["outputs"] if len(v["outputs"]) > 1 else [dict(v, name="output")]
        for o in per_output:
            lines.append(f"vs FP32{'' if len(per_output) == 1 else ' (output ' + str(o['name']) + ')'}: cosine "
                         f"{o['cosine']}, SQNR {o['sqnr_db']} dB, top-1 agreement {o['top1_agreement']}")
    click.echo("\n".join(lines))


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--threads", type=int, help="Runtime threads (default: the target's).")
@click.option("--runs", default=100, show_default=True, type=int)
@click.option("--warmup", default=10, show_default=True, type=int)
@click.option("--batch", type=int, help="One batch size (default: every batch size the target lists).")
@click.option("--target", default=DEFAULT_TARGET, show_default=True,
              help="Device target: a targets/ name (x86-cpu-ort, x86-cpu-openvino, rpi4-ort, …) or YAML file.")
@click.option("--ops", is_flag=True, help="Also show time per op type and the kernel the runtime chose.")
@command
@host_option
def profile(artifact, threads, runs, warmup, batch, target, ops, as_json):
    """A Measurement of an exported artifact on a device target: percentiles, throughput, raw samples."""
    from . import api
    result = api.profile(artifact, threads=threads, runs=runs, warmup=warmup, batch=batch, target=target, ops=ops)
    _emit(result, as_json, _print_profile)


def _print_profile(r: dict) -> None:
    target = r["target"]["name"]
    if not r["measured"]:
        click.echo(f"{r['artifact']} on {target}: not measured: {r['not_measured']}")
        return
    cpu = r["fingerprint"].get("processor", "?") + (f" at {r['host']}" if r.get("host") else "")
    for b in r["batches"]:
        click.echo(f"{r['artifact']} on {target} ({cpu}): batch {b['batch']}: p50 {b['p50_ms']:.3f} ms, p90 "
                   f"{b['p90_ms']:.3f} ms, p99 {b['p99_ms']:.3f} ms, {b['throughput_per_s']:.1f}/s "
                   f"({r['threads'] or 'default'} threads, {r['runs']} runs after {r['warmup']} warm-up; "
                   f"load {b['load_seconds']} s)")
    for warning in (r.get("device_state") or {}).get("warnings", []):
        click.echo(f"warning: {warning}")
    ops = r.get("ops") or {}
    if ops:
        total = sum(info["ms"] for info in ops.values()) or 1.0
        in_int8 = sum(info["ms"] for info in ops.values() if info.get("int8") == "yes")
        click.echo(f"  per op type ({in_int8 / total:.0%} of op time in int8 kernels):")
    for op, info in ops.items():
        click.echo(f"  {info['ms']:8.3f} ms  {info['nodes']:4d} x  int8 {info.get('int8', '?'):4s}  {op}")


@main.command()
@click.argument("source")
@model_options
@click.option("--targets", default="x86-cpu-ort,x86-cpu-openvino", show_default=True,
              help="Comma-separated device targets (targets/ names or YAML files); those that cannot run here "
                   "get rows that say why.")
@click.option("--recipes", default="w8a8-fast,w8a8", show_default=True,
              help="edgeq recipes to report (ignored when SOURCE is a bundle: the bundle is the edgeq variant).")
@click.option("--calib", default="zoo", show_default=True, help="Calibration data for the recipes and the ONNX "
                                                                 "Runtime quantize_static baseline.")
@click.option("--data", default="zoo:test", show_default=True, help="Evaluation data (labels give top-1).")
@click.option("--eval-limit", type=int, help="Evaluate on the first N samples.")
@click.option("--runs", default=100, show_default=True, type=int, help="Timed runs per row.")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for report.json, report.md and report.html.")
@click.option("--keep-artifacts", is_flag=True, help="Keep the measured files in OUTPUT/artifacts.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--incumbents/--no-incumbents", default=True, show_default=True,
              help="Also quantize with ONNX Runtime's quantize_static and NNCF and report them (--no-incumbents: "
                   "edgeq and float only, e.g. for a CI gate that compares edgeq with itself).")
@metric_options
@command
@host_option
def report(source, weights, num_classes, in_chans, input_shape, dynamic, trust_pickle, targets, recipes, calib,
           data, eval_limit, runs, out, keep_artifacts, force, incumbents, metric, charset, blank, labels, as_json):
    """Every variant of a model (or bundle) on every target: accuracy, latency, size, PTQ time, as a report."""
    from .report import ReportSpec, make_report
    if labels:
        raise click.UsageError("--labels is not supported by edgeq report; give --data with labels.")
    model_args = {k: v for k, v in dict(weights=weights, num_classes=num_classes, in_chans=in_chans,
                                        input_shape=input_shape, dynamic=dynamic).items() if v is not None}
    if trust_pickle:
        model_args["trust_pickle"] = True
    spec = ReportSpec(source, tuple(_names(targets)), tuple(_names(recipes)), calib, data, runs, eval_limit,
                      _metric_choice(metric, charset, blank), model_args, incumbents)
    result = make_report(spec, out, force, keep_artifacts)
    _emit({k: v for k, v in result.items() if k != "markdown"}, as_json,
          lambda r: click.echo(result["markdown"] + f"\nreport: {r['files']['html']}"))


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@main.command()
@click.option("--suite", default="zoo", show_default=True, type=click.Choice(["zoo", "speed", "all", "ptq", "gate"]),
              help="zoo: accuracy and latency of the bundled models; speed: latency of the 224×224 architectures; "
                   "ptq: seconds and peak memory of the default quantize at 224×224 (reports/ptq.md); gate: how "
                   "often edgeq gate is right on identical, 3 % and 10 % slower copies (reports/gate.md).")
@click.option("--models", help="Comma-separated subset of the suite's models.")
@click.option("--recipes", help="Comma-separated edgeq recipes (default: w8a8-fast,w8a8,w6a6,w4a8 on the zoo "
                                "suite, w8a8-fast,w8a8 on the speed suite; ptq suite: w8a8,w8a8-every-region; also w8a8-unbounded).")
@click.option("--runs", default=200, show_default=True, type=int, help="Timed runs per variant.")
@click.option("--eval-limit", type=int, help="Evaluate on the first N test images (default: all 10k).")
@click.option("--out-dir", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--metric", help="Accuracy metric of the zoo suite: top1 (default), top5, or file.py:fn / module:fn.")
@click.option("--decisions", default=100, show_default=True, type=int, help="Gate suite: decisions per case.")
@click.option("--threads", type=int, help="Gate suite: runtime threads (default: the target's).")
@click.option("--seeds", default=1, show_default=True, type=int,
              help="Zoo suite: also quantize recipes without latency search with seeds 1..N-1 and report the "
                   "drop's mean and spread over the N seeds.")
@command
def bench(suite, models, recipes, runs, eval_limit, out_dir, metric, decisions, threads, seeds, as_json):
    """Benchmark fp32 / ort-minmax / edgeq recipes: accuracy, latency, PTQ time, size."""
    if suite == "gate":
        from .gate.evidence import bench_gate
        result = bench_gate(models or "mobilevit_xxs", out_dir, decisions, threads)
        return _emit(result, as_json, lambda r: click.echo(r["markdown"]))
    if suite == "ptq":
        from .bench import SPEED_SUITE
        from .bench_ptq import run_ptq_bench
        result = run_ptq_bench(models.split(",") if models else list(SPEED_SUITE), out_dir,
                               recipes.split(",") if recipes else None)
        return _emit(result, as_json, lambda r: click.echo(r["markdown"]))
    from .bench import run_bench
    result = run_bench(suite, models.split(",") if models else None, recipes.split(",") if recipes else None,
                       runs, eval_limit, out_dir, _metric_choice(metric, None, 0), seeds)
    _emit(result, as_json, lambda r: click.echo(r["markdown"]))


@main.command()
@click.option("--baseline", required=True, type=click.Path(), help="What ships today: an artifact, bundle or report.json.")
@click.option("--current", required=True, type=click.Path(), help="The candidate, of the same kind.")
@click.option("--target", help="Device target to time on (default: the artifact's own target, else x86-cpu-ort).")
@click.option("--mode", default="auto", show_default=True, type=click.Choice(["auto", "interleaved", "report"]),
              help="interleaved: time both here, side by side; report: test two stored reports' samples.")
@click.option("--max-slowdown", default=0.05, show_default=True, type=float,
              help="Fractional slowdown that fails (interleaved: even the interval's fast end beyond it).")
@click.option("--alpha", default=0.002, show_default=True, type=float, help="Report mode: Mann-Whitney p-value.")
@click.option("--max-drop", type=float, help="Accuracy drop that fails, in the report's metric units.")
@click.option("--max-size-growth", default=0.10, show_default=True, type=float,
              help="Fractional artifact size growth that fails.")
@click.option("--variant", "variants", multiple=True, help="Compare only this variant (repeatable).")
@click.option("--max-rounds", default=60, show_default=True, type=int, help="Interleaved: most rounds before deciding.")
@click.option("--threads", type=int, help="Runtime threads (default: the target's).")
@click.option("--data", help="Artifacts with --max-drop: labelled evaluation data (e.g. zoo:test).")
@click.option("--eval-limit", type=int, help="Artifacts with --max-drop: evaluate both on the first N samples.")
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False), help="Write a Markdown summary here.")
@metric_options
@command
@host_option
def gate(baseline, current, target, mode, max_slowdown, alpha, max_drop, max_size_growth, variants, max_rounds,
         threads, data, eval_limit, summary_path, metric, charset, blank, labels, as_json):
    """Fail (exit 1) when CURRENT is slower, less accurate or bigger than BASELINE; exit 0 when not, 2 on bad input."""
    from .fsutil import check_output, write_text_atomic
    from .gate import GateOptions, run_gate
    from .gate.summary import markdown
    if summary_path:
        check_output(summary_path, force=True)
    options = GateOptions(target, mode, max_slowdown, alpha, max_drop, max_size_growth, tuple(variants),
                          max_rounds, threads, data, _metric_choice(metric, charset, blank), labels, eval_limit)
    result = run_gate(baseline, current, options).to_dict()
    text = markdown(result)
    if summary_path:
        write_text_atomic(summary_path, text)
    _emit(result, as_json, lambda r: click.echo(text))
    sys.exit(0 if result["passed"] else 1)


@main.command()
@click.option("--model", default="zoo:mobilevit_xxs", show_default=True)
@click.option("-o", "--output", "out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@command
def demo(model, out, force, as_json):
    """Quantize a bundled zoo model, export it for every target, measure it and write the report (report.html)."""
    from .demo import run_demo
    result = run_demo(model, out, force)
    _emit(result, as_json, lambda r: click.echo(r["markdown"] + f"\nreport: {r['files']['html']} "
                                                                f"(and report.md, report.json)"))


if __name__ == "__main__":
    main()
