"""Deformable-attention sampling: the C++ kernel and the torch path both equal transformers'."""

from __future__ import annotations

import contextlib
import shutil

import pytest
import torch
from transformers import GroundingDinoConfig
from transformers.models.grounding_dino.modeling_grounding_dino import (
    GroundingDinoMultiscaleDeformableAttention,
    MultiScaleDeformableAttention,
)

from workbench.model import deformable, fastpath
from workbench.model.deformable import (
    FastMultiscaleDeformableAttention,
    LevelwiseDeformableSampling,
)

SHAPES = [(6, 5), (3, 3), (2, 1)]


def inputs(dtype=torch.float32, batch=2, queries=7, heads=4, dim=8, points=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(SHAPES)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    tokens = int(spatial.prod(1).sum())
    value = torch.randn(batch, tokens, heads, dim, generator=g, dtype=dtype)
    # Locations a little outside [0, 1] too: corners off the map read zero.
    loc = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g, dtype=dtype)
    loc = loc * 1.3 - 0.15
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (value, loc, weights)], spatial, start


@pytest.fixture
def backend():
    """Restores the process-wide backend after a test that sets it."""
    before = deformable._backend
    yield deformable.set_backend
    deformable.set_backend(before)


def run(module, tensors, spatial, start):
    value, loc, weights = tensors
    out = module(value, spatial, SHAPES, start, loc, weights, 64)
    return out, torch.autograd.grad(out.square().sum(), tensors)


@pytest.mark.parametrize("name", ["cpp", "torch"])
def test_sampling_equals_transformers_forward_and_backward(name, backend):
    if name == "cpp" and deformable.load_kernel() is None:
        pytest.fail(f"the CPU kernel did not build here: {deformable.kernel_status()}")
    backend(name)
    tensors, spatial, start = inputs()
    expected, expected_grads = run(MultiScaleDeformableAttention(), tensors, spatial, start)
    out, grads = run(LevelwiseDeformableSampling(), tensors, spatial, start)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dim", [6, 32])  # a width without a compiled case; four SIMD chunks
def test_kernel_equals_transformers_at_other_head_widths(dim, backend):
    if deformable.load_kernel() is None:
        pytest.fail(f"the CPU kernel did not build here: {deformable.kernel_status()}")
    backend("cpp")
    tensors, spatial, start = inputs(dim=dim, seed=dim)
    expected, expected_grads = run(MultiScaleDeformableAttention(), tensors, spatial, start)
    out, grads = run(LevelwiseDeformableSampling(), tensors, spatial, start)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_kernel_runs_on_torch_threads_with_the_same_result_on_one():
    """Built with OpenMP, the kernel splits its (batch, head) slices over torch's threads; each
    slice is computed alike on any thread count, so one thread gives the same bits."""
    kernel = deformable.load_kernel()
    if kernel is None:
        pytest.fail(f"the CPU kernel did not build here: {deformable.kernel_status()}")
    before = torch.get_num_threads()
    tensors, spatial, start = inputs(batch=3, queries=20, heads=4, dim=16)
    results = {}
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            assert kernel.parallel_threads(64) == threads
            value, loc, weights = (t.detach().clone().requires_grad_() for t in tensors)
            out = deformable.kernel_sampling(value, spatial, start, loc, weights)
            grads = torch.autograd.grad(out.square().sum(), (value, loc, weights))
            results[threads] = (out, *grads)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(results[2], results[1], strict=True):
        assert torch.equal(a, b)


def test_kernel_gradients_match_finite_differences():
    if deformable.load_kernel() is None:
        pytest.fail(f"the CPU kernel did not build here: {deformable.kernel_status()}")
    (value, loc, weights), spatial, start = inputs(
        torch.float64, batch=1, queries=3, heads=2, dim=3
    )
    # Keep points off the integer pixel lines, where bilinear sampling has kinks.
    with torch.no_grad():
        loc.copy_(loc.clamp(0.02, 0.98))

    def fn(v, locations, w):
        return deformable.kernel_sampling(v, spatial, start, locations, w)

    assert torch.autograd.gradcheck(fn, (value, loc, weights), eps=1e-6, atol=1e-5)


def test_kernel_is_used_for_float_cpu_tensors_unless_the_torch_path_is_chosen(backend):
    backend("auto")
    tensors, _, _ = inputs()
    built = deformable.load_kernel() is not None
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        assert deformable._use_kernel(tensors[0].to(dtype)) == built
    assert not deformable._use_kernel(tensors[0].to(torch.int32))
    backend("torch")
    assert not deformable._use_kernel(tensors[0])


def test_half_precision_inputs_are_sampled_in_float32_by_the_kernel(backend):
    """Under bf16 autocast on a CPU ``value`` arrives in bf16: the kernel samples the same values
    in float32 and hands back bf16; the gradients are the float32 kernel's, in bf16."""
    if deformable.load_kernel() is None:
        pytest.fail(f"the CPU kernel did not build here: {deformable.kernel_status()}")
    backend("cpp")
    tensors, spatial, start = inputs()
    half = [t.detach().to(torch.bfloat16).requires_grad_() for t in tensors]
    as_float = [t.detach().float().requires_grad_() for t in half]  # the same (rounded) values

    def sample(values):
        return LevelwiseDeformableSampling()(values[0], spatial, SHAPES, start, *values[1:], 64)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sample(half)
    expected = sample(as_float)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected.to(torch.bfloat16))
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).bfloat16()
    grads = torch.autograd.grad(out, half, grad_out)
    expected_grads = torch.autograd.grad(expected, as_float, grad_out.float())
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == torch.bfloat16 and torch.equal(got, want.to(torch.bfloat16))
    backend("torch")  # and close to the torch path's own bf16 sampling
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = sample(half)
    torch.testing.assert_close(out.float(), reference.float(), rtol=2e-2, atol=3e-2)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        deformable.set_backend("fast")


def test_a_build_that_overruns_its_time_is_stopped_and_remembered(tmp_path):
    folder = tmp_path / deformable.kernel_name()
    reason = deformable.build_kernel(folder, folder.name, timeout=1)
    assert reason is not None and "took over 1 s" in reason
    assert (folder / "FAILED").read_text().strip() == reason
    assert not (folder / "BUILT").exists()
    (folder / "FAILED").write_text("remembered\n")
    assert deformable.build_kernel(folder, folder.name, timeout=1) == "remembered"  # not retried


def test_a_lock_left_by_a_killed_build_does_not_block_the_next(tmp_path):
    """torch's builder waits forever on its ``lock`` file; a killed build leaves one behind."""
    built = deformable.kernel_root() / deformable.kernel_name()
    if deformable.load_kernel() is None:
        pytest.fail(f"the CPU kernel did not build here: {deformable.kernel_status()}")
    folder = tmp_path / built.name
    shutil.copytree(built, folder)  # up to date: the build only re-links if anything changed
    (folder / "BUILT").unlink()
    (folder / "lock").touch()
    assert deformable.build_kernel(folder, folder.name, timeout=600) is None
    assert (folder / "BUILT").is_file() and not (folder / "lock").exists()
    module = deformable._import_built(folder, folder.name)
    tensors, spatial, start = inputs()
    value, loc, weights = (t.detach() for t in tensors)
    out = module.forward(value.transpose(1, 2).contiguous(), spatial, start, loc, weights)
    expected = deformable.kernel_sampling(value, spatial, start, loc, weights)
    torch.testing.assert_close(out.view_as(expected), expected)


@pytest.mark.parametrize("coordinates", [2, 4])  # the encoder's points; the decoder's boxes
def test_fast_module_gives_transformers_locations_and_output_bit_for_bit(coordinates, backend):
    """The fast forward computes the sampling locations in another layout, not other values: the
    same output bits, and gradients equal up to the order of a sum."""
    backend("torch")  # one sampling implementation on both paths: the test is about the locations
    config = GroundingDinoConfig(d_model=32, num_feature_levels=len(SHAPES))
    torch.manual_seed(coordinates)
    original = GroundingDinoMultiscaleDeformableAttention(config, num_heads=4, n_points=3)
    fast = GroundingDinoMultiscaleDeformableAttention(config, num_heads=4, n_points=3)
    fast.load_state_dict(original.state_dict())
    assert deformable.use_levelwise_sampling(fast) == 1
    assert type(fast) is FastMultiscaleDeformableAttention
    spatial = torch.tensor(SHAPES)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    tokens = int(spatial.prod(1).sum())
    g = torch.Generator().manual_seed(1)
    memory = torch.randn(2, tokens, 32, generator=g)
    queries = torch.randn(2, 5, 32, generator=g)
    reference = torch.rand(2, 5, len(SHAPES), coordinates, generator=g)
    mask = torch.ones(2, tokens, dtype=torch.bool)
    mask[1, -3:] = False

    def run(module, path):
        ref = reference.clone().requires_grad_()
        with path():
            out, weights = module(
                queries,
                attention_mask=mask,
                encoder_hidden_states=memory,
                reference_points=ref,
                spatial_shapes=spatial,
                spatial_shapes_list=SHAPES,
                level_start_index=start,
            )
        grads = torch.autograd.grad(out.square().sum(), [ref, *module.parameters()])
        return out, weights, grads

    original.attn = fast.attn
    want = run(original, fastpath.disabled)
    got = run(fast, fastpath.disabled)  # the switch off: transformers' own forward
    again = run(fast, contextlib.nullcontext)
    for result in (got, again):
        assert torch.equal(result[0], want[0]) and torch.equal(result[1], want[1])
        # The reference points' gradient sums over heads and points in another order.
        for a, b in zip(result[2], want[2], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
