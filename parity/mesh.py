"""`--mesh dp=2,tp=4`: run the Flax side of the parity gate sharded over a device mesh.

The grammar and the mesh itself are flax_bart's (`flax_bart.mesh_spec`, shared with `finetune`);
here their errors become ParityInputError (exit 2), and the batch rules of the gate: the mesh takes
the first `prod(sizes)` devices of each `--flax-device` platform, the params are placed by the default
rules and every input batch is split over `dp`/`fsdp`, so the batch size must be a multiple of their
product (the default batch size is rounded up to one).

On a CPU-only machine, simulate devices before JAX starts:
`XLA_FLAGS=--xla_force_host_platform_device_count=8 flax-bart parity CKPT --mesh dp=2,tp=4`.
"""

from __future__ import annotations

from flax_bart import mesh_spec
from flax_bart.mesh_spec import MESH_AXES, MeshSpec, MeshSpecError  # noqa: F401  (re-exported)
from parity.checkpoint import ParityInputError


def parse_mesh(text: str) -> MeshSpec:
    """`"dp=2,tp=4"` -> MeshSpec; bad text is a ParityInputError naming the part and what is expected."""
    try:
        return mesh_spec.parse_mesh(text)
    except MeshSpecError as e:
        raise ParityInputError(str(e)) from None


def build_mesh(spec: MeshSpec, platform: str):
    """A `jax.sharding.Mesh` over the first `spec.size` devices of `platform` (ParityInputError if too few)."""
    try:
        return mesh_spec.build_mesh(spec, platform)
    except MeshSpecError as e:
        raise ParityInputError(str(e)) from None


def default_batch_size(spec: MeshSpec | None, base: int = 3) -> int:
    """`base` rows, rounded up to a multiple of the mesh's batch shards."""
    n = 1 if spec is None else spec.batch_shards
    return -(-base // n) * n


def check_batch(spec: MeshSpec | None, rows: int, what: str) -> None:
    if spec is not None and rows % spec.batch_shards:
        raise ParityInputError(
            f"--mesh {spec.label}: {what} has {rows} rows, which the batch axes (dp x fsdp = {spec.batch_shards}) "
            f"do not divide; use a multiple of {spec.batch_shards}")
