"""Hardware-dependent defaults: bfloat16 only where the hardware computes it natively."""

from __future__ import annotations

import pytest

from gap_models.config import RunConfig
from gap_models.hardware import Hardware, detect, read_cpuinfo, resolve_precision

AVX2_ONLY = Hardware("AMD EPYC (AVX2)", frozenset({"sse4_2", "avx", "avx2", "fma"}))
AVX512_BF16 = Hardware("AMD EPYC (Zen 5)", frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
AMX = Hardware("Intel Xeon (Sapphire Rapids)", frozenset({"avx2", "avx512f", "amx_bf16"}))


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        (AVX2_ONLY, "float32"),
        (AVX512_BF16, "mixed_bfloat16"),
        (AMX, "mixed_bfloat16"),
        (Hardware("avx512 without bf16", frozenset({"avx2", "avx512f"})), "float32"),
        (Hardware("arm", frozenset({"fp", "asimd"})), "float32"),
        (Hardware("with an Ampere GPU", frozenset({"avx2"}), ((8, 0),)), "mixed_bfloat16"),
        (Hardware("with a Turing GPU", frozenset({"avx2"}), ((7, 5),)), "float32"),
        # oneDNN capped below its bfloat16 kernels: emulated whatever the CPU has
        (Hardware("capped", AVX512_BF16.cpu_flags, (), "AVX2"), "float32"),
        (Hardware("capped", AVX512_BF16.cpu_flags, (), "avx512_core_vnni"), "float32"),
        (Hardware("not capped", AVX512_BF16.cpu_flags, (), "AVX512_CORE_BF16"), "mixed_bfloat16"),
    ],
)
def test_auto_precision_is_bfloat16_only_where_native(hardware, expected):
    choice = resolve_precision("auto", hardware)
    assert choice.value == expected
    assert choice.reason.startswith("auto:")
    if expected == "float32":
        assert "no native bfloat16" in choice.reason


@pytest.mark.parametrize("explicit", ["float32", "mixed_bfloat16"])
def test_an_explicit_precision_wins_on_any_hardware(explicit):
    for hardware in (AVX2_ONLY, AVX512_BF16):
        assert resolve_precision(explicit, hardware).value == explicit


def test_reason_names_the_flag_it_saw():
    assert "avx512_bf16" in resolve_precision("auto", AVX512_BF16).reason
    assert "amx_bf16" in resolve_precision("auto", AMX).reason
    assert AVX2_ONLY.reported_flags() == "avx2 fma"


def test_cpuinfo_is_parsed_for_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma avx512_bf16\n\n" * 2
    assert read_cpuinfo(x86) == ("AMD EPYC", frozenset({"fpu", "avx2", "fma", "avx512_bf16"}))
    _model, flags = read_cpuinfo("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert flags == {"fp", "asimd", "bf16"}


def test_this_machine_resolves_once_and_the_run_logs_it():
    from gap_models import records
    from gap_models.hardware import hardware_params

    requested = RunConfig(source="tfds:cats_vs_dogs")
    choice = resolve_precision(requested.precision)
    config = requested.resolved()
    assert requested.precision == "auto" and config.precision == choice.value != "auto"
    params = records.run_params(config, requested.precision, choice.reason, "code")
    assert params["precision"] == choice.value
    assert params["precision_requested"] == "auto"
    assert params["code_version"] == "code"
    machine = hardware_params()
    assert machine["cpu_flags"] == detect().reported_flags()
    assert machine["cpu_model"]
