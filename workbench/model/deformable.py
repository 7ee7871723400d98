"""Multi-scale deformable attention's sampling step: a fused CPU kernel, or level by level in torch.

transformers' pure-PyTorch ``MultiScaleDeformableAttention`` samples every level with
``grid_sample``, stacks the samples of all levels and points into one ``[B*H, D, Q, L*P]`` tensor,
then weights and sums it; its backward scatters through ``grid_sample``'s generic kernel. Two
faster drop-ins share its call signature:

- ``cpp`` (CPU, float32/float64; bf16 and fp16 inputs, as under autocast, are sampled in float32):
  ``csrc/ms_deform_attn.cpp``, one pass that samples, weights and sums without materialising the
  samples, and a hand-written backward in one pass. Built on first use with the machine's C++
  compiler through ``torch.utils.cpp_extension`` (needs g++ and ninja;
  about a minute, in a child process stopped after ``WORKBENCH_KERNEL_BUILD_TIMEOUT`` seconds,
  900 by default; one build per source, torch version and CPU kind, kept in :func:`kernel_root`;
  a failed build is remembered there, not retried). ``make setup`` builds it ahead of time with
  ``python -m workbench.model.deformable`` (``--rebuild`` forgets an earlier build or failure).
- ``torch``: each level's weighted samples summed as soon as they are drawn, which avoids the
  stack; the fallback on GPUs and where no compiler is found.

Both give transformers' result up to float rounding (tests/test_deformable.py; speed in
benchmarks/results/deformable_attention.json). ``WORKBENCH_DEFORMABLE=torch`` (or ``cpp``, or the
default ``auto``: the kernel where it builds) chooses; :func:`set_backend` does the same in code;
``WORKBENCH_FAST=0`` (:mod:`workbench.model.fastpath`) turns the kernel off with the other
speed-ups.
:func:`use_levelwise_sampling` swaps the module into a model; it has no parameters, so checkpoints
are unaffected. It also gives transformers' deformable-attention modules the forward of
:class:`FastMultiscaleDeformableAttention`, which computes the sampling locations (reference
point plus normalised offset) in a layout that is quick on a CPU, with the same bits.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.grounding_dino.modeling_grounding_dino import (
    GroundingDinoMultiscaleDeformableAttention,
    MultiScaleDeformableAttention,
)

from workbench.model import fastpath

BACKENDS = ("auto", "cpp", "torch")
_SOURCE = Path(__file__).with_name("csrc") / "ms_deform_attn.cpp"
_lock = threading.Lock()
_kernel: object | None = None  # the built extension module, once loaded
_kernel_error: str | None = None  # why it could not be built, once tried
_backend = os.environ.get("WORKBENCH_DEFORMABLE", "auto")
BUILD_TIMEOUT = float(os.environ.get("WORKBENCH_KERNEL_BUILD_TIMEOUT", 900))
# -fopenmp: the kernel splits its work with at::parallel_for, which is OpenMP in torch's CPU
# builds and runs on one thread in code compiled without it. The extension then links the
# libgomp.so.1 that torch has already loaded, so the process keeps one OpenMP runtime.
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)


def set_backend(name: str) -> None:
    """``"auto"`` (the kernel where it builds, else torch), ``"cpp"`` (the kernel or an error)
    or ``"torch"``; for every deformable-attention module of every model in this process."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"deformable-attention backend {name!r}: choose one of {BACKENDS}")
    _backend = name


def _cpu_kind() -> str:
    """A short tag of this CPU's instruction-set flags: a kernel built with -march=native for one
    CPU kind never loads on another that shares the kernel folder."""
    try:
        flags = next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = "unknown"
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def kernel_name() -> str:
    """The extension's name: one per kernel source, build flags, torch and Python version, and
    CPU kind."""
    versions = f"{torch.__version__} {sys.version_info[:2]} {CFLAGS} {LDFLAGS}".encode()
    digest = hashlib.sha1(_SOURCE.read_bytes() + versions).hexdigest()[:8]
    return f"workbench_msda_{digest}_{_cpu_kind()}"


def kernel_root() -> Path:
    """Where kernels are built: ``WORKBENCH_KERNEL_DIR``; else beside this Python's environment
    (a fresh environment starts with no build state), or ``~/.cache/workbench/kernels`` when the
    environment is not writable."""
    if os.environ.get("WORKBENCH_KERNEL_DIR"):
        return Path(os.environ["WORKBENCH_KERNEL_DIR"])
    prefix = Path(sys.prefix)
    if os.access(prefix, os.W_OK):
        return prefix / "workbench-kernels"
    return Path.home() / ".cache" / "workbench" / "kernels"


def _ninja_on_path(env: dict[str, str]) -> None:
    """torch's extension builder runs ``ninja`` from PATH; the pinned ``ninja`` wheel installs it
    beside this Python (``.venv/bin``), which is not on PATH when that Python is run directly."""
    try:
        import ninja

        folder = ninja.BIN_DIR
    except (ImportError, AttributeError):
        folder = str(Path(sys.executable).parent)
    if folder not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = folder + os.pathsep + env.get("PATH", "")


def _import_built(folder: Path, name: str):
    """The built extension module at ``folder/name.so``, imported directly (no build tools)."""
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.so")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_kernel(folder: Path, name: str, timeout: float = BUILD_TIMEOUT) -> str | None:
    """Build extension ``name`` into ``folder`` in a child process; None when built (now or
    before), else why not, which is also written to ``folder/FAILED`` so that later processes do
    not try again (``python -m workbench.model.deformable --rebuild`` does).

    The child runs at most ``timeout`` seconds, then it and its compiler are killed: a build never
    hangs its caller. Builders of one folder take turns on a file lock, and the turn holder
    removes torch's own ``lock`` file, which a killed build leaves behind and which torch's
    builder otherwise waits on forever.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "BUILT").is_file():
        return None
    if (folder / "FAILED").is_file():
        return (folder / "FAILED").read_text().strip()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.setdefault("MAX_JOBS", "1")  # one source file; never one compiler per core
    _ninja_on_path(env)
    command = [sys.executable, "-m", "workbench.model.deformable", "--build-into", str(folder)]
    child = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        reason = (
            f"the build took over {timeout:.0f} s and was stopped (set "
            "WORKBENCH_KERNEL_BUILD_TIMEOUT to allow longer)"
        )
    else:
        if child.returncode == 0 and (folder / "BUILT").is_file():
            return None
        lines = [line for line in log.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"the build exited with status {child.returncode}"
        (folder / "build.log").write_text(log)
    (folder / "FAILED").write_text(reason + "\n")
    return reason


def _build_here(folder: Path) -> int:
    """The child of :func:`build_kernel`: build with torch's builder, check the module imports,
    then mark the folder BUILT."""
    from torch.utils.cpp_extension import load

    name = folder.name
    with open(folder.parent / f"{name}.lock", "w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)  # builders of this folder take turns
        if (folder / "BUILT").is_file():
            return 0
        (folder / "lock").unlink(missing_ok=True)  # torch's, left by a killed build
        load(
            name=name,
            sources=[str(_SOURCE)],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            build_directory=str(folder),
            verbose=True,
        )
        _import_built(folder, name)
        (folder / "BUILT").write_text(f"{_SOURCE.name}\n")
    return 0


def load_kernel():
    """The compiled kernel module, building it on first call; None (with the reason in
    :func:`kernel_status`) when this machine cannot build it."""
    global _kernel, _kernel_error
    if _kernel is not None or _kernel_error is not None:  # decided: every forward asks
        return _kernel
    with _lock:
        if _kernel is None and _kernel_error is None:
            name = kernel_name()
            folder = kernel_root() / name
            try:
                _kernel_error = build_kernel(folder, name)
                if _kernel_error is None:
                    _kernel = _import_built(folder, name)
            except Exception as err:  # an unwritable folder, a module that does not import
                _kernel_error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"
        return _kernel


def kernel_status() -> str:
    """ "built", "not built yet", or why it failed to build."""
    if _kernel is not None:
        return "built"
    return _kernel_error or "not built yet"


def _use_kernel(value: Tensor) -> bool:
    if _backend == "torch" or value.device.type != "cpu" or not fastpath.enabled():
        return False
    if value.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return False
    if load_kernel() is None:
        if _backend == "cpp":
            raise RuntimeError(
                f"WORKBENCH_DEFORMABLE=cpp, but the kernel did not build: "
                f"{_kernel_error}; install g++ and ninja, or use auto"
            )
        if not getattr(_use_kernel, "warned", False):
            _use_kernel.warned = True
            warnings.warn(
                f"deformable attention runs on the slower torch path: the CPU kernel did not "
                f"build ({_kernel_error})",
                stacklevel=3,
            )
        return False
    return True


class _KernelSampling(torch.autograd.Function):
    """The C++ kernel with its hand-written backward; ``value`` heads-first ``[B, H, T, D]``."""

    @staticmethod
    def forward(ctx, value, shapes, starts, locations, weights):
        ctx.save_for_backward(value, shapes, starts, locations, weights)
        return _kernel.forward(value, shapes, starts, locations, weights)

    @staticmethod
    def backward(ctx, grad_out):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grads = _kernel.backward(value, shapes, starts, locations, weights, grad_out)
        return grads[0], None, None, grads[1], grads[2]


def kernel_sampling(
    value: Tensor, shapes: Tensor, starts: Tensor, locations: Tensor, weights: Tensor
) -> Tensor:
    """``value [B, T, H, D]``, ``locations [B, Q, H, L, P, 2]`` in [0, 1], ``weights [B, Q, H, L,
    P]`` -> ``[B, Q, H * D]`` through the C++ kernel (which must be loaded).

    Half-precision inputs (under bf16 autocast on a CPU, ``value`` comes in bf16) are sampled in
    float32, as autocast runs reductions, and the result is cast back to ``value``'s dtype.
    """
    b, _, heads, dim = value.shape
    dtype = value.dtype
    if dtype in (torch.bfloat16, torch.float16):
        value, locations, weights = value.float(), locations.float(), weights.float()
    out = _KernelSampling.apply(
        value.transpose(1, 2).contiguous(),
        shapes.to(torch.int64).contiguous(),
        starts.to(torch.int64).contiguous(),
        locations.contiguous(),
        weights.contiguous(),
    )
    return out.view(b, out.shape[1], heads * dim).to(dtype)


def levelwise_sampling(
    value: Tensor, shapes_list: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """The torch path: each level sampled with ``grid_sample`` and its weighted samples summed at
    once (no stack over levels). Same shapes as :func:`kernel_sampling`."""
    b, _, heads, dim = value.shape
    q = locations.shape[1]
    levels = value.split([h * w for h, w in shapes_list], dim=1)
    grids = 2 * locations - 1  # grid_sample's [-1, 1] coordinates
    out = None
    for level, (h, w) in enumerate(shapes_list):
        v = levels[level].flatten(2).transpose(1, 2).reshape(b * heads, dim, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [B*H, Q, P, 2]
        samples = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        level_weights = weights[:, :, :, level].transpose(1, 2).reshape(b * heads, 1, q, -1)
        term = (samples * level_weights).sum(-1)  # [B*H, D, Q]
        out = term if out is None else out + term
    return out.reshape(b, heads * dim, q).transpose(1, 2).contiguous()


class LevelwiseDeformableSampling(nn.Module):
    """Drop-in for transformers' ``MultiScaleDeformableAttention`` (same call signature): the
    C++ kernel where it applies, else the level-by-level torch path."""

    def forward(
        self,
        value: Tensor,
        value_spatial_shapes: Tensor,
        value_spatial_shapes_list: list[tuple[int, int]],
        level_start_index: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
        im2col_step: int,
    ) -> Tensor:
        """``value [B, T, H, D]``, ``sampling_locations [B, Q, H, L, P, 2]`` in [0, 1],
        ``attention_weights [B, Q, H, L, P]`` -> ``[B, Q, H * D]``."""
        if _use_kernel(value):
            return kernel_sampling(
                value,
                value_spatial_shapes,
                level_start_index,
                sampling_locations,
                attention_weights,
            )
        return levelwise_sampling(
            value, value_spatial_shapes_list, sampling_locations, attention_weights
        )


def sampling_locations(
    reference_points: Tensor, offsets: Tensor, spatial_shapes: Tensor, n_points: int
) -> Tensor:
    """transformers' sampling locations, ``[B, Q, H, L, P, 2]``, bit for bit, in a layout that
    is quick on a CPU.

    transformers broadcasts ``reference_points [B, Q, L, 2 | 4]`` and the per-level normaliser
    against ``offsets [B, Q, H, L, P, 2]`` with the points between the levels and the two
    coordinates, so every elementwise kernel runs an inner loop of two values (and divides by an
    int64 tensor); the encoder's call at 256 px took about 9 ms for the division and 8 for the
    addition. Here the last three dimensions are flattened to one of ``L*P*2`` values, the
    normaliser and reference points expanded to it once, and the same operations run in the same
    order on contiguous rows.
    """
    b, q, h, levels, points, _ = offsets.shape
    flat = offsets.view(b, q, h, levels * points * 2)

    def per_point(t: Tensor) -> Tensor:  # [B, Q, L, 2] -> [B, Q, 1, L*P*2]
        return t[:, :, None, :, None, :].expand(b, q, 1, levels, points, 2).reshape(b, q, 1, -1)

    if reference_points.shape[-1] == 2:
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        normalizer = normalizer.to(offsets.dtype)[:, None, :].expand(levels, points, 2)
        out = per_point(reference_points) + flat / normalizer.reshape(-1)
    elif reference_points.shape[-1] == 4:
        centre, size = per_point(reference_points[..., :2]), per_point(reference_points[..., 2:])
        out = centre + flat / n_points * size * 0.5
    else:
        raise ValueError(
            f"reference points need 2 or 4 coordinates, got {reference_points.shape[-1]}"
        )
    return out.view(b, q, h, levels, points, 2)


class FastMultiscaleDeformableAttention(GroundingDinoMultiscaleDeformableAttention):
    """transformers' module (same parameters and names) with its sampling locations computed by
    :func:`sampling_locations`; the original forward where the speed-ups are off."""

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        position_embeddings: Tensor | None = None,
        reference_points: Tensor | None = None,
        spatial_shapes: Tensor | None = None,
        spatial_shapes_list: list[tuple[int, int]] | None = None,
        level_start_index: Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor]:
        if not fastpath.enabled():
            return super().forward(
                hidden_states,
                attention_mask,
                encoder_hidden_states,
                encoder_attention_mask,
                position_embeddings,
                reference_points,
                spatial_shapes,
                spatial_shapes_list,
                level_start_index,
                output_attentions,
            )
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings
        b, q, _ = hidden_states.shape
        tokens = encoder_hidden_states.shape[1]
        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:
            value = value.masked_fill(~attention_mask[..., None], float(0))
        value = value.view(b, tokens, self.n_heads, self.d_model // self.n_heads)
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        offsets = self.sampling_offsets(hidden_states).view(b, q, heads, levels, points, 2)
        weights = self.attention_weights(hidden_states).view(b, q, heads, levels * points)
        weights = F.softmax(weights, -1).view(b, q, heads, levels, points)
        locations = sampling_locations(reference_points, offsets, spatial_shapes, points)
        output = self.attn(
            value,
            spatial_shapes,
            spatial_shapes_list,
            level_start_index,
            locations,
            weights,
            self.im2col_step,
        )
        return self.output_proj(output), weights


def use_levelwise_sampling(model: nn.Module) -> int:
    """Replace every transformers deformable-sampling module in ``model``, and give every
    transformers deformable-attention module the forward of
    :class:`FastMultiscaleDeformableAttention` (its class changes; its parameters do not);
    returns how many sampling modules were replaced."""
    count = 0
    for module in list(model.modules()):
        if type(module) is GroundingDinoMultiscaleDeformableAttention:
            module.__class__ = FastMultiscaleDeformableAttention
        for name, child in list(module.named_children()):
            if type(child) is MultiScaleDeformableAttention:
                setattr(module, name, LevelwiseDeformableSampling())
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.model.deformable [--rebuild]``: build the CPU kernel now (``make
    setup`` does)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--rebuild", action="store_true", help="forget an earlier build or failure and build again"
    )
    parser.add_argument("--build-into", help=argparse.SUPPRESS)  # the builder child
    args = parser.parse_args(argv)
    if args.build_into:
        return _build_here(Path(args.build_into))
    folder = kernel_root() / kernel_name()
    if args.rebuild:
        shutil.rmtree(folder, ignore_errors=True)
    load_kernel()
    status = kernel_status()
    if status == "built":
        print(f"deformable attention: CPU kernel built ({folder})")
        return 0
    print(
        f"deformable attention: CPU kernel unavailable ({status}); the torch path will be used; "
        f"build log in {folder}"
    )
    return 0  # a fallback exists: not a setup failure


if __name__ == "__main__":
    raise SystemExit(main())
