"""DTYPE: what auto picks from the CPU's flags and the device, and the USE_FP16 alias."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backends.device import cpu_flags, cpu_has_bf16, dtype_name, resolve_dtype
from engine.settings import load_settings

SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16"})
ZEN3 = frozenset({"avx2", "fma", "f16c"})  # f16c converts halves; it computes none


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(SAPPHIRE_RAPIDS, torch.bfloat16), (ZEN4, torch.bfloat16), (ZEN3, torch.float32)],
)
def test_auto_on_a_cpu_is_bf16_only_where_the_cpu_computes_it(
    flags: frozenset[str], expected: torch.dtype
) -> None:
    assert resolve_dtype("cpu", "auto", flags) == expected


def test_auto_on_a_gpu_is_float16() -> None:
    # NVIDIA and ROCm alike: torch names both "cuda".
    assert resolve_dtype("cuda", "auto", ZEN3) == torch.float16


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_an_explicit_dtype_is_taken_on_a_cpu(name: str) -> None:
    assert dtype_name(resolve_dtype("cpu", name, ZEN3)) == name  # type: ignore[arg-type]


def test_bf16_on_a_gpu_without_it_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.errors import StartupError

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(StartupError, match=r"DTYPE=float16"):
        resolve_dtype("cuda", "bfloat16", ZEN3)


def test_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    flags = cpu_flags(cpuinfo)
    assert {"avx2", "avx512_bf16", "amx_bf16"} <= flags
    assert cpu_has_bf16(flags)
    assert cpu_flags(tmp_path / "absent") == frozenset()  # macOS: no /proc, float32


def test_dtype_setting_and_the_deprecated_alias() -> None:
    assert load_settings([], {}).model_dtype == "auto"
    assert load_settings([], {}).deprecations() == []
    assert load_settings([], {"DTYPE": "bfloat16"}).model_dtype == "bfloat16"
    # USE_FP16=false meant float32 everywhere; true meant what auto picks on a GPU.
    off = load_settings([], {"USE_FP16": "false"})
    assert off.model_dtype == "float32"
    assert "DTYPE" in off.deprecations()[0]
    assert load_settings(["--use-fp16"], {}).model_dtype == "auto"
    # An explicit DTYPE wins over the alias.
    assert load_settings([], {"USE_FP16": "false", "DTYPE": "float16"}).model_dtype == "float16"


def test_a_bad_dtype_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_settings([], {"DTYPE": "fp8"})
    assert exit_info.value.code == 2
    assert "DTYPE" in capsys.readouterr().err
