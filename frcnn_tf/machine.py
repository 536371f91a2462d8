"""What this CPU is: its model name and the vector/matrix instruction flags that decide speed here."""
import pathlib
import platform

# Flags that change which kernels TensorFlow, onnxruntime and torch can use on x86 CPUs.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
               "amx_int8")


def cpu_description(cpuinfo="/proc/cpuinfo"):
    """(model name, set of all flags) of the first CPU in cpuinfo; (platform's name, empty set) if unreadable."""
    try:
        text = pathlib.Path(cpuinfo).read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name", platform.machine()), set(fields.get("flags", "").split())


def speed_flags(cpuinfo="/proc/cpuinfo"):
    """The SPEED_FLAGS this CPU has, in SPEED_FLAGS' order (for benchmark reports)."""
    flags = cpu_description(cpuinfo)[1]
    return [flag for flag in SPEED_FLAGS if flag in flags]


def native_bfloat16(cpuinfo="/proc/cpuinfo"):
    """True when the CPU multiplies bfloat16 natively (AVX512_BF16 or AMX-BF16). Without it TensorFlow
    emulates bfloat16 (stop 23's main job trained 4566 s with --use_amp on AMD EPYC, AVX2 only)."""
    return bool(cpu_description(cpuinfo)[1] & {"avx512_bf16", "amx_bf16"})
