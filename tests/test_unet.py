"""unet.py: shapes, conditions, None paths, gradients, and a tiny overfit."""
import pytest
import torch

from ddpm import Diffusion, beta_schedule
from unet import UNet


@pytest.mark.parametrize("channels,size,attn", [(1, 28, (7,)), (3, 32, (8,)), (3, 64, (16,)), (3, 128, (16,))])
def test_output_shape_equals_input_shape(channels, size, attn):
    net = UNet(image_channels=channels, image_size=size, base_channels=16, channel_mults=(1, 2, 2, 2),
               attention_resolutions=attn, conditions={"label": 3, "pos": 20})
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([0, 999]), {"label": torch.tensor([0, 2]), "pos": torch.randn(2, 20)})
    assert out.shape == x.shape


def small_net(**kw):
    return UNet(image_channels=1, image_size=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), conditions={"label": 4, "pos": 5}, **kw)


def train_steps(net, steps, seed=0):
    """A few optimizer steps of the diffusion loss with conditions sometimes dropped."""
    d = Diffusion(beta_schedule("linear", 100))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x0 = torch.randn(8, 1, 16, 16, generator=g)
    cond = {"label": torch.arange(8) % 4, "pos": torch.randn(8, 5, generator=g)}
    for _ in range(steps):
        opt.zero_grad()
        d.loss(net, x0, cond, p_uncond=0.5, generator=g).backward()
        opt.step()


def test_label_and_pos_change_the_output_after_training():
    torch.manual_seed(0)
    net = small_net()
    x, t = torch.randn(4, 1, 16, 16), torch.full((4,), 50)
    label, pos = torch.tensor([0, 1, 2, 3]), torch.randn(4, 5)
    with torch.no_grad():
        # zero-initialised last layer of the pos projection: pos has no effect at the start
        assert torch.equal(net(x, t, {"label": label, "pos": pos}), net(x, t, {"label": label, "pos": 2 * pos}))
    train_steps(net, 3)
    with torch.no_grad():
        base = net(x, t, {"label": label, "pos": pos})
        assert not torch.allclose(base, net(x, t, {"label": label.flip(0), "pos": pos}))
        assert not torch.allclose(base, net(x, t, {"label": label, "pos": pos + 1}))
        uncond = net(x, t)
        assert not torch.allclose(base, uncond)  # the null condition is a different input
        # dropping every row inside the call is the unconditional model; dropping some rows only touches those
        all_dropped = net(x, t, {"label": label, "pos": pos}, torch.ones(4, dtype=torch.bool))
        assert torch.allclose(all_dropped, uncond, atol=1e-6)
        some = net(x, t, {"label": label, "pos": pos}, torch.tensor([True, False, True, False]))
        assert torch.allclose(some[[0, 2]], uncond[[0, 2]], atol=1e-6) and torch.allclose(some[[1, 3]], base[[1, 3]], atol=1e-6)
        # one condition given, the other null
        assert net(x, t, {"label": label}).shape == x.shape and net(x, t, {"pos": pos}).shape == x.shape


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = small_net(dropout=0.1)
    train_steps(net, 3)  # move the zero-initialised layers (out conv, conv2s, pos) so gradients flow past them
    net.zero_grad()
    d = Diffusion(beta_schedule("linear", 100))
    x0 = torch.randn(16, 1, 16, 16)
    cond = {"label": torch.arange(16) % 4, "pos": torch.randn(16, 5)}
    d.loss(net, x0, cond, p_uncond=0.5, generator=torch.Generator().manual_seed(0)).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_unconditional_unet_without_condition_modules():
    net = UNet(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=())
    assert len(net.encoders) == 0 and len(net.null_embeddings) == 0
    assert net(torch.randn(3, 1, 8, 8), torch.tensor(10)).shape == (3, 1, 8, 8)  # scalar t broadcasts


@pytest.mark.parametrize("call,message", [
    (lambda n: n(torch.randn(2, 3, 16, 16), torch.zeros(2)), r"\(B, 1, 16, 16\)"),
    (lambda n: n(torch.randn(2, 1, 16, 16), torch.zeros(2), {"label": torch.tensor([0, 1, 2])}), "3 rows for a batch of 2"),
    (lambda n: n(torch.randn(2, 1, 16, 16), torch.zeros(2), {"colour": torch.zeros(2)}), "not \\['colour'\\]"),
    (lambda n: n(torch.randn(2, 1, 16, 16), torch.zeros(2), {"label": torch.zeros(2, dtype=torch.long)},
                 torch.zeros(2)), "drop must be a bool"),
    (lambda n: n(torch.randn(2, 1, 16, 16), torch.zeros(3)), r"\(2,\)"),
])
def test_bad_inputs_name_the_expected_value(call, message):
    with pytest.raises(ValueError, match=message):
        call(small_net())


def test_a_condition_the_network_was_not_built_with_is_a_clear_error():
    net = UNet(image_size=8, base_channels=8, channel_mults=(1,), attention_resolutions=())
    with pytest.raises(ValueError, match="takes the conditions \\[\\]"):
        net(torch.randn(1, 1, 8, 8), torch.zeros(1), {"label": torch.zeros(1, dtype=torch.long)})
    with pytest.raises(ValueError, match="unknown condition 'colour'.*condition_encoder"):
        UNet(image_size=8, base_channels=8, channel_mults=(1,), attention_resolutions=(), conditions={"colour": 3})


def test_tiny_overfit_drives_the_loss_down():
    """A U-Net memorises four 16x16 images: the loss on fixed (t, noise) falls far below its start."""
    torch.manual_seed(0)
    net = UNet(image_size=16, base_channels=16, channel_mults=(1, 2), attention_resolutions=(), conditions={"label": 4})
    d = Diffusion(beta_schedule("linear", 100))
    x0 = torch.zeros(4, 1, 16, 16)
    for i in range(4):  # four distinct bars
        x0[i, 0, 4 * i:4 * i + 4, :] = 1.0
    x0 = x0 * 2 - 1
    cond = {"label": torch.arange(4)}

    def fixed_loss():
        with torch.no_grad():
            return d.loss(net, x0.repeat(16, 1, 1, 1), {"label": torch.arange(4).repeat(16)},
                          generator=torch.Generator().manual_seed(123)).item()

    start = fixed_loss()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(60):  # (below 0.25 x the start by step 25: 0.14, 0.06 at 50; 250 steps gave the same verdict)
        opt.zero_grad()
        d.loss(net, x0.repeat(4, 1, 1, 1), {"label": cond["label"].repeat(4)}).backward()
        opt.step()
    assert fixed_loss() < 0.25 * start


def test_a_checkpoint_of_the_previous_release_loads_under_the_new_names():
    """cond_embedding.* and cond_null.* (the previous names) load into encoders.* and null_embeddings.*."""
    kwargs = dict(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(),
                  conditions={"label": 3, "pos": 2})
    torch.manual_seed(0)
    old = {k.replace("encoders.", "cond_embedding.").replace("null_embeddings.", "cond_null."): v + 1
           for k, v in UNet(**kwargs).state_dict().items()}
    net = UNet(**kwargs)
    net.load_state_dict(old)
    assert torch.equal(net.encoders["label"].weight, old["cond_embedding.label.weight"])


def test_the_defaults_are_train_pys_small_unet_and_the_time_embedding_width_is_its_own_attribute():
    from plumbing import train_command
    small = train_command.unet_kwargs("small", (28, 28, 1), None, {"label": 10, "pos": 20})
    shapes = lambda net: {k: v.shape for k, v in net.state_dict().items()}  # noqa: E731
    assert shapes(UNet(conditions={"label": 10, "pos": 20})) == shapes(UNet(**small))
    net = UNet(image_size=8, base_channels=8, channel_mults=(1, 2), conditions={"label": 2})
    assert net.time_dim == 8 == net.time_mlp[0].in_features  # the sinusoid's width, not read off input_conv


def test_an_odd_width_gets_the_sinusoids_and_a_zero_column_and_its_u_net_runs():
    """--base-channels 3: the timestep embedding is 3 wide (cos, sin and a column of zeros, as improved-diffusion)."""
    from unet import timestep_embedding
    t = torch.tensor([0, 7, 999])
    odd, even = timestep_embedding(t, 5), timestep_embedding(t, 4)
    assert odd.shape == (3, 5) and torch.equal(odd[:, :4], even) and not odd[:, 4].any()
    net = UNet(image_size=8, base_channels=3, channel_mults=(1, 2), conditions={"label": 10})
    x = torch.randn(2, 1, 8, 8)
    assert net(x, torch.tensor([1, 500]), {"label": torch.tensor([3, 4])}).shape == x.shape
