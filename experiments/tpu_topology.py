"""TPU slice topologies and compile-only TPU devices on a host without a TPU (for `plan.py`).

The one place slice shapes are computed: `plan.py` reads `Topology`, and the launchers
(`launch/common.sh`'s ``tpu_shape``) run ``python3 experiments/tpu_topology.py ACCELERATOR``,
which prints a slice's chips, hosts, grid, GKE accelerator label and TPU VM runtime as shell
assignments (standard library only: it runs on a workstation without the project installed).

Topologies: ``v5p-N`` (N TensorCores, two per chip: v5p-64 is 32 chips, 2x4x4), ``v4-N``
likewise, ``v5e-N`` / ``v5litepod-N`` and ``v6e-N`` (N chips: v6e-16 is 4x4), or a chip grid
``v5p:2x4x4``, ``v6e:4x4``, ``v5e:2x4``; several slices joined by the data-centre network
are ``Topology.slices``.

libtpu: jax's ``tpu`` extra pins it (``libtpu==0.0.42.*`` for jax 0.10.2, about 700 MB).
`experiments/launch/venv.sh` installs that pin into ``.venv/libtpu`` (not into the venv's
site-packages: importable there, libtpu makes every plain CPU ``jax.devices()`` try to start
a TPU runtime and print errors). `use_libtpu` adds that folder to ``sys.path``; by hand:
``pip install --target .venv/libtpu "libtpu==0.0.42.*"`` (the pin of your jax:
``python -c "import importlib.metadata as m; print(m.requires('jax'))"``). Elsewhere set
``OMNIFLATTEN_LIBTPU_DIR``, or install ``jax[tpu]`` (an importable libtpu is used as it is).
The host runs nothing: JAX stays on CPU, and several plans may run at once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBTPU_DIR = os.environ.get("OMNIFLATTEN_LIBTPU_DIR", os.path.join(ROOT, ".venv", "libtpu"))

# No JAX at import: this module loads before a backend starts.


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given
    family: str  # v4, v5p, v5e, v6e
    grid: tuple[int, ...]  # chips per dimension of one slice
    slices: int

    # family: (libtpu's name, chip config, TensorCores per name unit, grid rank)
    FAMILIES = {"v4": ("v4", "megacore", 2, 3), "v5p": ("v5", "megacore", 2, 3),
                "v5e": ("v5e", "default", 1, 2), "v6e": ("v6e", "default", 1, 2)}
    # family: (GKE's gke-tpu-accelerator label, the TPU VM software version)
    CLOUD = {"v4": ("tpu-v4-podslice", "tpu-ubuntu2204-base"),
             "v5p": ("tpu-v5p-slice", "v2-alpha-tpuv5"),
             "v5e": ("tpu-v5-lite-podslice", "v2-alpha-tpuv5-lite"),
             "v6e": ("tpu-v6e-slice", "v2-alpha-tpuv6e")}
    ALIASES = {"v5": "v5p", "v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.grid)

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.slices

    @property
    def libtpu_name(self) -> str:
        return f"{self.FAMILIES[self.family][0]}:{'x'.join(map(str, self.grid))}"

    @property
    def accelerator_type(self) -> str:
        """One slice's Cloud TPU name (``v5p-64``, ``v6e-16``, ``v5litepod-16``)."""
        units = self.chips_per_slice * self.FAMILIES[self.family][2]
        return f"{'v5litepod' if self.family == 'v5e' else self.family}-{units}"

    @property
    def hosts_per_slice(self) -> int:
        """A multi-host slice has 4 chips per host; a 2-D slice of up to 8 chips is one VM."""
        if self.FAMILIES[self.family][3] == 2 and self.chips_per_slice <= 8:
            return 1
        return max(self.chips_per_slice // 4, 1)

    def shell(self) -> str:
        """One slice's shape as the launchers' shell assignments."""
        gke, runtime = self.CLOUD[self.family]
        hosts = self.hosts_per_slice
        return (f"TPU_CHIPS={self.chips_per_slice} TPU_HOSTS={hosts} "
                f"TPU_CHIPS_PER_HOST={self.chips_per_slice // hosts} "
                f"TPU_TOPOLOGY={'x'.join(map(str, self.grid))} TPU_GKE_ACCELERATOR={gke} "
                f"TPU_RUNTIME={runtime}")

    def describe(self) -> str:
        one = f"{self.accelerator_type} ({self.libtpu_name}, {self.chips_per_slice} chips)"
        return one if self.slices == 1 else f"{self.slices} x {one} = {self.chips} chips"


def _grid(chips: int, rank: int) -> tuple[int, ...]:
    """Cloud TPU's slice shapes: from 2x2x1 (3-D) or 1x1 (2-D), double the smallest dimension,
    the last of equals first (v5p-64: 2x4x4, v5p-128: 4x4x4, v6e-16: 4x4, v6e-32: 4x8)."""
    grid = [2, 2, 1] if rank == 3 else [1, 1]
    if chips < math.prod(grid) or chips & (chips - 1):
        raise ValueError(f"{chips} chips is not a {rank}-D TPU slice (a power of two"
                         f"{', at least 4' if rank == 3 else ''})")
    while math.prod(grid) < chips:
        smallest = min(grid)
        grid[max(i for i, g in enumerate(grid) if g == smallest)] *= 2
    return tuple(grid)


def parse_topology(name: str, slices: int = 1) -> Topology:
    """``v5p-64`` / ``v6e-16`` / ``v5e-8`` (Cloud TPU names) or ``v5p:2x4x4`` (a chip grid)."""
    if slices < 1:
        raise ValueError(f"--slices must be at least 1, not {slices}")
    m = re.fullmatch(r"(v\w+?)([-:])(\d+(?:x\d+)*)", name.strip().lower())
    family = m and Topology.ALIASES.get(m.group(1), m.group(1))
    if not m or family not in Topology.FAMILIES:
        raise ValueError(f"unknown topology {name!r}: use v5p-N, v4-N, v5e-N, v6e-N (Cloud TPU "
                         "names) or a chip grid such as v5p:2x4x4, v6e:4x4")
    _, _, cores_per_unit, rank = Topology.FAMILIES[family]
    if m.group(2) == "-":
        units = int(m.group(3))
        if units % cores_per_unit:
            raise ValueError(f"{name}: {family}-N counts TensorCores, {cores_per_unit} per chip")
        grid = _grid(units // cores_per_unit, rank)
    else:
        grid = tuple(int(g) for g in m.group(3).split("x"))
        if len(grid) != rank:
            raise ValueError(f"{name}: a {family} grid has {rank} dimensions")
    return Topology(name, family, grid, slices)


def libtpu_path() -> str | None:
    """Where libtpu is: "" when importable as it is, LIBTPU_DIR, or None (not installed)."""
    if importlib.util.find_spec("libtpu") is not None:
        return ""
    return LIBTPU_DIR if os.path.isdir(os.path.join(LIBTPU_DIR, "libtpu")) else None


def use_libtpu(topology: Topology) -> None:
    """Before JAX loads: libtpu on the path, JAX itself on CPU (the TPU devices are
    compile-only, so no chip is touched and several plans may hold libtpu at once)."""
    path = libtpu_path()
    if path is None:
        sys.exit(f"error: libtpu is not installed (looked in {LIBTPU_DIR}); run "
                 "bash experiments/launch/venv.sh, or see `plan.py --help`")
    if path:
        sys.path.append(path)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # Off a TPU VM libtpu cannot read these from the metadata server and logs errors.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def tpu_devices(topology: Topology):
    from jax.experimental.topologies import get_topology_desc

    return get_topology_desc(platform="tpu", topology_name=topology.libtpu_name,
                             chip_config_name=Topology.FAMILIES[topology.family][1],
                             num_slices=topology.slices).devices


if __name__ == "__main__":  # the launchers' `tpu_shape`: stdlib only, no flags library
    try:
        print(parse_topology(sys.argv[1]).shell())
    except (IndexError, ValueError) as e:
        sys.exit(f"error: {e if sys.argv[1:] else 'give an accelerator type, e.g. v5p-64'}")
