"""parity.machine: the fingerprint, ISA caps for child processes, and the demo on a lower ISA.

The last test is the issue's "fresh clone on a machine of another CPU type": it runs `flax-bart demo
--quick` capped one ISA tier below this CPU (AVX2 on AVX-512 machines, AVX on AVX2-only ones) against
the committed baseline, whichever CPU type recorded it, and needs exit 0.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parity import machine
from parity.report import load_report

REPO = Path(__file__).resolve().parents[2]


def test_fingerprint_names_cpu_isa_and_versions():
    import torch  # noqa: F401 - the fingerprint reads an imported torch only

    fp = machine.collect()
    assert fp["cpu_model"] and isinstance(fp["isa_flags"], list) and fp["id"] == machine.fingerprint_id(fp)
    assert fp["torch"] and fp["jax"] and fp["jaxlib"] and fp["torch_cpu_capability"]
    assert machine.same_machine(fp, dict(fp)) is True and machine.same_machine(fp, None) is None
    other = {**fp, "isa_flags": [*fp["isa_flags"], "avx512_bf16"]}
    assert machine.same_machine(fp, other) is False
    assert machine.differences(fp, other) == [f"isa_flags: {fp['isa_flags']} -> {other['isa_flags']}"]
    line = machine.describe(fp)
    assert fp["cpu_model"] in line and f"jax {fp['jax']}" in line and fp["id"] in line


def test_tiers_from_flags():
    assert machine.native_tier({"avx", "avx2", "avx512f", "avx512bw"}) == "AVX512"
    assert machine.native_tier({"avx", "avx2"}) == "AVX2"
    assert machine.native_tier({"avx"}) == "AVX"
    assert machine.native_tier(set()) is None


def test_restricted_env_caps_every_framework_and_refuses_a_higher_tier():
    native = machine.native_tier(machine._cpuinfo()[1])
    if native is None:
        pytest.skip("not an x86 CPU with AVX")
    env = machine.restricted_isa_env("AVX", {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                                                          "--xla_cpu_max_isa=AVX512"})
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=AVX"
    assert (env["ATEN_CPU_CAPABILITY"], env["ONEDNN_MAX_CPU_ISA"], env["MKL_ENABLE_INSTRUCTIONS"]) == (
        "default", "AVX", "AVX")
    if native != "AVX512":
        with pytest.raises(ValueError, match="this CPU supports at most"):
            machine.restricted_isa_env("AVX512")
    with pytest.raises(ValueError, match="expected one of"):
        machine.restricted_isa_env("SSE2")


def test_demo_on_a_lower_isa_passes_against_the_committed_baseline(tmp_path):
    try:
        tier = machine.other_tier()
    except ValueError as exc:
        pytest.skip(str(exc))
    env = machine.restricted_isa_env(tier)
    env["FLAX_BART_CACHE"] = str(tmp_path / "cache")
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-c", "import sys; from parity.cli import demo_main; sys.exit(demo_main())",
         "--quick", "--out", str(out), "--no-compile-cache"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert lines[-1].endswith(": PASS (exit code 0)")
    report = load_report(out / "report.json")
    assert report.status == "PASS" and report.baseline["passed"]
    assert report.baseline["path"].endswith(os.path.join("baselines", "demo-quick.json"))
    # The child really ran capped: XLA's flag and ATen's capability are in its fingerprint.
    assert report.machine["xla_cpu_max_isa"] == machine.ISA_TIERS[tier]["xla"]
    assert report.machine["torch_cpu_capability"].lower() == machine.ISA_TIERS[tier]["aten"]
    assert report.baseline["mode"] in ("different machine", "unknown machine")
