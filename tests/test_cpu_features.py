"""The CPU's native bf16, read from /proc/cpuinfo's text (never from this machine's own CPU in a test)."""

from lib_ort.cpu_features import has_native_bf16, parse_cpuinfo, read_flags

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_flags_of_the_first_processor_are_read():
    flags = parse_cpuinfo(CPUINFO)
    assert {"avx512_bf16", "amx_bf16", "avx2"} <= flags and "spectre_v1" not in flags
    assert parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd bf16\n") == frozenset()  # arm64 names it otherwise


def test_native_bf16_needs_amx_or_avx512_bf16():
    assert has_native_bf16({"amx_bf16"}) and has_native_bf16({"avx512_bf16"})
    assert not has_native_bf16({"avx512f", "avx512_vnni", "avx2"})  # AVX-512 without its bf16 extension
    assert not has_native_bf16(frozenset())


def test_an_unreadable_cpuinfo_means_unknown_flags(tmp_path):
    assert read_flags(tmp_path / "missing") == frozenset()
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    assert has_native_bf16(read_flags(tmp_path / "cpuinfo"))
