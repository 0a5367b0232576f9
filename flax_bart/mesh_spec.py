"""`dp=2,tp=4`: the mesh grammar of `flax-bart parity --mesh` and `flax-bart finetune --mesh`.

The text names mesh axes among `dp` (batch), `fsdp` (params and batch) and `tp` (attention heads,
FFN, vocabulary), the axes `flax_bart.sharding.DEFAULT_RULES` understand, each with its size. The
mesh takes the first `prod(sizes)` devices of one platform.

On a CPU-only machine, simulate devices before JAX starts:
`XLA_FLAGS=--xla_force_host_platform_device_count=8`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


class MeshSpecError(ValueError):
    """Mesh text that does not parse, or a mesh this process has too few devices for."""


MESH_AXES = ("dp", "fsdp", "tp")
_ITEM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([0-9]+)\s*$")


@dataclass(frozen=True)
class MeshSpec:
    axes: tuple[tuple[str, int], ...]   # (name, size) in the order given

    @property
    def label(self) -> str:
        return ",".join(f"{n}={s}" for n, s in self.axes)

    @property
    def size(self) -> int:
        return math.prod(s for _, s in self.axes)

    @property
    def batch_shards(self) -> int:
        """Rows of a batch must be a multiple of this (the product of the dp and fsdp sizes)."""
        return math.prod(s for n, s in self.axes if n in ("dp", "fsdp"))

    def column_label(self, platform: str) -> str:
        """The Flax device name in report columns, e.g. `cpu[dp=2,tp=4]`."""
        return f"{platform}[{self.label}]"


def parse_mesh(text: str) -> MeshSpec:
    """`"dp=2,tp=4"` -> MeshSpec; bad text is a MeshSpecError naming the part and what is expected."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise MeshSpecError(f"--mesh {text!r}: expected axis=size pairs such as dp=2,tp=4 "
                               f"(axes among {', '.join(MESH_AXES)})")
    axes: list[tuple[str, int]] = []
    for part in parts:
        m = _ITEM.match(part)
        if not m:
            raise MeshSpecError(f"--mesh {text!r}: {part.strip()!r} is not axis=size (e.g. tp=4)")
        name, size = m.group(1), int(m.group(2))
        if name not in MESH_AXES:
            raise MeshSpecError(f"--mesh {text!r}: unknown axis {name!r}; expected some of {', '.join(MESH_AXES)} "
                                   "(the axes the default partition rules shard over)")
        if any(name == n for n, _ in axes):
            raise MeshSpecError(f"--mesh {text!r}: axis {name!r} given twice")
        if size < 1:
            raise MeshSpecError(f"--mesh {text!r}: axis {name} has size {size}; expected a size >= 1")
        axes.append((name, size))
    return MeshSpec(tuple(axes))


def build_mesh(spec: MeshSpec, platform: str):
    """A `jax.sharding.Mesh` (automatic sharding axes) over the first `spec.size` devices of `platform`."""
    import jax
    from jax.sharding import AxisType

    try:
        devices = jax.devices(platform)
    except RuntimeError:
        devices = []
    if len(devices) < spec.size:
        hint = (f"; on CPU, simulate devices with XLA_FLAGS=--xla_force_host_platform_device_count={spec.size} "
                "set before the process starts") if platform == "cpu" else ""
        raise MeshSpecError(f"--mesh {spec.label}: needs {spec.size} {platform} devices, JAX sees "
                               f"{len(devices)}{hint}")
    names = tuple(n for n, _ in spec.axes)
    shape = tuple(s for _, s in spec.axes)
    return jax.make_mesh(shape, names, devices=devices[:spec.size], axis_types=(AxisType.Auto,) * len(names))
