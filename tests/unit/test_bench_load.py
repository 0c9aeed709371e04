"""bench.load's plain logic: the vLLM peer's command line and environment, which venv it
runs from, what DTYPE=auto picks, and the targets computed from a run's rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.load import (
    Result,
    auto_dtype,
    flag_name,
    infinity_bin,
    scenario_set,
    server,
    targets,
    vllm_command,
    vllm_env,
    vllm_venv,
)


def test_vllm_command_serves_the_folder_as_a_pooling_model_under_the_served_name() -> None:
    command = vllm_command(Path("/v"), Path("/models/minilm"), "minilm", "bfloat16", 8123)
    assert command[:3] == ["/v/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    options = dict(zip(command[3::2], command[4::2], strict=False))
    assert options["--model"] == "/models/minilm"
    assert options["--served-model-name"] == "minilm"
    assert options["--runner"] == "pooling"
    assert options["--dtype"] == "bfloat16"
    assert (options["--host"], options["--port"]) == ("127.0.0.1", "8123")


def test_vllm_env_gives_the_model_every_core_and_a_small_kv_cache() -> None:
    env = vllm_env(2)
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"


def make_venv(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").touch()
    return root


def test_vllm_venv_default_is_used_where_it_exists(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / ".venv-vllm")
    assert vllm_venv(None, default=venv) == (venv, f"vLLM: from {venv}")


def test_vllm_venv_default_missing_is_skipped_and_said(tmp_path: Path) -> None:
    venv, line = vllm_venv(None, default=tmp_path / "absent")
    assert venv is None
    assert "skipped" in line
    assert "make vllm-env" in line


def test_vllm_venv_named_but_missing_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="absent"):
        vllm_venv(str(tmp_path / "absent"))


def test_vllm_venv_none_turns_it_off(tmp_path: Path) -> None:
    make_venv(tmp_path / ".venv-vllm")
    assert vllm_venv("none", default=tmp_path / ".venv-vllm")[0] is None


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni", "bfloat16"),
        ("flags\t\t: fpu avx2 amx_bf16 amx_tile", "bfloat16"),
        ("flags\t\t: fpu avx2 fma f16c", "float32"),
        ("", "float32"),
    ],
)
def test_auto_dtype_reads_the_bf16_flags(flags: str, expected: str) -> None:
    assert auto_dtype(f"processor\t: 0\n{flags}\n") == expected


def test_scenario_set_keeps_the_run_order_and_refuses_unknown_groups() -> None:
    import argparse

    assert scenario_set("hybrid,dense") == ("dense", "hybrid")
    with pytest.raises(argparse.ArgumentTypeError):
        scenario_set("dense,bogus")


def row(system: str, scenario: str, rate: float, p50: float, p99: float | None = None) -> Result:
    return Result(system, scenario, 1, 1, 100, 0, rate, p50, p99 if p99 is not None else p50)


def dense_rows(ours: str) -> list[Result]:
    return [
        row(ours, "1 client x 1 text", 100.0, 9.0),
        row(ours, "32 clients x 1 text", 300.0, 80.0, 160.0),
        row(ours, "4 clients x 32 texts", 600.0, 200.0),
        row("infinity_emb server", "1 client x 1 text", 40.0, 20.0),
        row("infinity_emb server", "32 clients x 1 text", 100.0, 300.0),
        row("model alone (ceiling)", "4 clients x 32 texts", 700.0, 45.0),
    ]


def by_name(goals: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(g["target"]).split(" (flag")[0]: g for g in goals}


def test_targets_compare_the_auto_dtype_system_with_vllm_bf16() -> None:
    ours = flag_name("bfloat16")
    rows = [
        *dense_rows(ours),
        row(flag_name("float32"), "4 clients x 32 texts", 1.0, 1.0),  # must not be the one used
        row("vLLM (bfloat16)", "1 client x 1 text", 110.0, 10.0),
        row("vLLM (bfloat16)", "4 clients x 32 texts", 550.0, 230.0),
    ]
    goals = by_name(targets(rows, "bfloat16"))
    assert goals["4 x 32: texts/s vs vLLM bf16"]["measured"] == pytest.approx(600 / 550, abs=1e-3)
    assert goals["4 x 32: texts/s vs vLLM bf16"]["met"] is False  # 1.09 < 1.2
    assert goals["1 x 1: p50 vs vLLM bf16 p50"]["measured"] == pytest.approx(0.9)
    assert goals["1 x 1: p50 vs vLLM bf16 p50"]["met"] is True
    assert goals["32 x 1: texts/s vs infinity_emb server"]["measured"] == pytest.approx(3.0)
    assert goals["32 x 1: p99 / p50"]["measured"] == pytest.approx(2.0)
    assert "DTYPE=auto: bfloat16" in str(goals["32 x 1: p99 / p50"]["target"])


def test_targets_leave_out_the_goals_whose_rows_the_run_lacks() -> None:
    goals = by_name(targets(dense_rows(flag_name("float32")), "float32"))
    assert "4 x 32: texts/s vs vLLM bf16" not in goals
    assert "hybrid time / embeddings time, same texts" not in goals
    assert goals["4 x 32: texts/s vs model alone (batch 32)"]["measured"] == pytest.approx(
        600 / 700, abs=1e-3
    )


def test_server_that_exits_before_its_health_check_reports_its_output() -> None:
    command = [sys.executable, "-c", "import sys; print('bad flag'); sys.exit(3)"]
    with (
        server(command, {}, "http://127.0.0.1:9/health", startup_s=30) as ready,
        pytest.raises(RuntimeError, match="bad flag"),
    ):
        ready()


def make_bin(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).touch()
    return folder


def test_infinity_bin_prefers_this_venv_then_the_infinity_venv(tmp_path: Path) -> None:
    here = make_bin(tmp_path / "here" / "bin", "python", "infinity_emb")
    other = make_bin(tmp_path / ".venv-infinity" / "bin", "infinity_emb")
    assert infinity_bin(None, current=here, default=other.parent)[0] == here
    (here / "infinity_emb").unlink()
    assert infinity_bin(None, current=here, default=other.parent)[0] == other


def test_infinity_bin_missing_is_skipped_or_refused_when_named(tmp_path: Path) -> None:
    here = make_bin(tmp_path / "here" / "bin", "python")
    bin_dir, line = infinity_bin(None, current=here, default=tmp_path / "absent")
    assert bin_dir is None
    assert "skipped" in line
    with pytest.raises(SystemExit, match="absent"):
        infinity_bin(str(tmp_path / "absent"), current=here)
    assert infinity_bin("none", current=here)[0] is None


def test_a_peer_that_answered_nothing_makes_its_goals_unmet_not_a_crash() -> None:
    ours = flag_name("float32")
    rows = [
        *dense_rows(ours),
        row("vLLM (bfloat16)", "1 client x 1 text", 0.0, float("nan")),
        row("vLLM (bfloat16)", "4 clients x 32 texts", 0.0, float("nan")),
    ]
    goals = by_name(targets(rows, "float32"))
    for name in ("4 x 32: texts/s vs vLLM bf16", "1 x 1: p50 vs vLLM bf16 p50"):
        assert goals[name]["met"] is False
