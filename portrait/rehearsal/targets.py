"""The targets of issue 21, judged on a stage's record (only at the true sizes: tiny figures mean nothing).

Host memory (CPU): converting peaks at ≤ 1.5× the largest checkpoint file; loading at ≤ 1.3× the loaded
model; a render adds little on top of loading (≤ 1.25× the load stage's peak). CUDA: the optimised render
≤ 3.9 s of compute per video second (an H100; ≥ 2× the baseline), PSNR ≥ 40 dB against the baseline,
≤ 8 GiB at 512² for 10 s, the model-offload tier within a 12 GB card, memory flat in audio length (60 s ≤
1.1× 10 s), compile ≤ 60 s cold and ≤ 10 s warm.
"""

from __future__ import annotations

from typing import Any

GIB_PER_12_GB = 12e9 / 2**30


def _target(name: str, value: float | None, limit: float, at_least: bool = False) -> dict[str, Any]:
    met = value is not None and (value >= limit if at_least else value <= limit)
    value = None if value is None else round(float(value), 3)
    return {"name": name, "value": value, "limit": limit, "met": met}


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if not num or not den else num / den


def _host(record: dict[str, Any], earlier: dict[str, dict[str, Any]], device: str) -> list[dict[str, Any]]:
    stage, peak = record["stage"], record.get("peak_rss_mib")
    if stage == "convert":
        value = _ratio(peak, record.get("largest_checkpoint_mib"))
        return [_target("peak RSS / largest checkpoint file", value, 1.5)]
    if stage == "load" and device == "cpu":
        return [_target("peak RSS / loaded model", _ratio(peak, record.get("model_mib")), 1.3)]
    if stage == "render" and device == "cpu" and "load" in earlier:
        value = _ratio(peak, earlier["load"].get("peak_rss_mib"))
        return [_target("peak RSS / the load stage's peak RSS", value, 1.25)]
    return []


def _gpu(record: dict[str, Any], earlier: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    stage = record["stage"]
    if stage == "benchmark":
        per_second = record.get("seconds_per_video_second", {}).get("optimised")
        return [
            _target("optimised s of compute per video s (H100)", per_second, 3.9),
            _target("speed-up over the baseline", record.get("speedup"), 2.0, at_least=True),
            _target("PSNR of optimised vs baseline frames (dB)", record.get("psnr_db"), 40.0, at_least=True),
        ]
    if stage == "vram_none":
        return [_target("peak GPU GiB, 512², 10 s", record.get("render_peak_gpu_gib"), 8.0)]
    if stage == "vram_model":
        return [_target("peak GPU GiB with model offload (a 12 GB card)", record.get("render_peak_gpu_gib"),
                        round(GIB_PER_12_GB, 2))]  # fmt: skip
    if stage == "long_clip" and "vram_none" in earlier:
        value = _ratio(record.get("render_peak_gpu_gib"), earlier["vram_none"].get("render_peak_gpu_gib"))
        return [_target("peak GPU, 60 s clip / 10 s clip", value, 1.1)]
    if stage in ("compile_cold", "compile_warm"):
        limit = 60.0 if stage == "compile_cold" else 10.0
        return [
            _target(
                f"compile seconds ({stage.removeprefix('compile_')})", record.get("compile_seconds"), limit
            )
        ]
    return []


def judge(
    record: dict[str, Any], earlier: dict[str, dict[str, Any]], real: bool, device: str
) -> list[dict[str, Any]]:
    """The targets that apply to ``record`` (``earlier``: the records of the stages before it), each as
    ``{"name", "value", "limit", "met"}``; none for a failed stage or at the tiny sizes."""
    if not real or not record.get("ok"):
        return []
    if device.startswith("cuda"):
        return _gpu(record, earlier) + _host(record, earlier, "cuda")
    return _host(record, earlier, "cpu")
