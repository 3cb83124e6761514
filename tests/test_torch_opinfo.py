"""torch's own sample inputs (OpInfo) for softmax, log_softmax (with and without dtype),
logsumexp, cross_entropy and nll_loss, run through mlecore.torch: every sample's values and
gradients agree with torch's."""

import pytest
import torch
from torch.testing._internal.common_methods_invocations import op_db

import mlecore.torch as mt

MT = {
    "softmax": mt.softmax,
    "log_softmax": mt.log_softmax,
    "logsumexp": mt.logsumexp,
    "nn.functional.cross_entropy": mt.cross_entropy,
    "nn.functional.nll_loss": mt.nll_loss,
}
OPS = [op for op in op_db if op.name in MT]
#: mlecore computes in these (complex and integer results are not its business).
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6),
       torch.bfloat16: (2e-2, 2e-2), torch.float16: (4e-3, 4e-3)}


def test_every_operation_has_samples():
    assert {op.name for op in OPS} == set(MT)
    assert any(op.variant_test_name == "with_dtype" for op in OPS)


@pytest.mark.parametrize("op", OPS, ids=lambda op: f"{op.name}-{op.variant_test_name}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_samples_agree_with_torch(op, dtype):
    if dtype not in op.supported_dtypes("cpu"):
        pytest.skip(f"torch's {op.name} does not take {dtype}")
    rtol, atol = TOL[dtype]
    grads = dtype in op.supported_backward_dtypes("cpu")
    ran = 0
    for sample in op.sample_inputs("cpu", dtype, requires_grad=grads):
        ours, theirs = [sample.input, *sample.args], [sample.input, *sample.args]
        ours = [a.detach().clone().requires_grad_(a.requires_grad)
                if isinstance(a, torch.Tensor) else a for a in ours]
        want = op.op(*theirs, **sample.kwargs)
        got = MT[op.name](*ours, **sample.kwargs)
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
        if grads and want.requires_grad and want.numel():
            seed = torch.randn(want.shape, generator=torch.Generator().manual_seed(ran),
                               dtype=torch.float64).to(want.dtype)
            leaves = [a for a in theirs if isinstance(a, torch.Tensor) and a.requires_grad]
            mine = [a for a in ours if isinstance(a, torch.Tensor) and a.requires_grad]
            gw = torch.autograd.grad(want, leaves, seed, allow_unused=True)
            gg = torch.autograd.grad(got, mine, seed, allow_unused=True)
            for a, b in zip(gg, gw, strict=True):
                if b is None:
                    assert a is None or not a.any()
                else:
                    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True)
        ran += 1
    assert ran
