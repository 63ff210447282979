"""DiagNormal's unchecked constructor shortcut (validate_args=False, tensors of one shape)
must build the same distribution as the general constructor."""

import torch

import vitorch as vt


def test_diag_normal_shortcut_matches_the_general_constructor():
    loc, scale = torch.randn(2, 3, 4), torch.rand(2, 3, 4) + 0.5
    fast = vt.DiagNormal(loc, scale, validate_args=False)
    general = vt.DiagNormal(loc, scale, validate_args=True)  # the checked constructor
    assert fast.batch_shape == (2, 3) and fast.event_shape == (4,)
    assert fast.loc is loc and fast.scale is scale
    assert fast._validate_args is False
    assert general.batch_shape == fast.batch_shape and general.event_shape == fast.event_shape
    assert general.loc is loc and general.scale is scale
    z = torch.randn(5, 2, 3, 4)
    ref = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    torch.testing.assert_close(fast.log_prob(z), ref.log_prob(z))
    torch.testing.assert_close(fast.entropy(), ref.entropy())
    assert fast.expand((7, 2, 3)).batch_shape == (7, 2, 3)
    assert fast.detach().loc.requires_grad is False
    # A scalar (0-d) loc is not a vector: the shortcut must not accept it.
    try:
        vt.DiagNormal(torch.tensor(0.0), torch.tensor(1.0), validate_args=False)
    except ValueError as err:
        assert "loc" in str(err)
    else:
        raise AssertionError("a 0-d loc must raise ValueError")
