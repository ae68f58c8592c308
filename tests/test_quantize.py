import pytest
import torch

from semrec.tokenizer.quantize import Quantizer, ResidualQuantizer, rotate_onto
from semrec.tokenizer.rqvae import RQVAE, RQVAEConfig

GRAD_MODES = ["ste", "rotation", "gumbel"]


def small_rqvae(grad_mode: str, **overrides) -> RQVAE:
    torch.manual_seed(0)
    config = RQVAEConfig(
        input_dim=16, hidden_dims=[32], latent_dim=8, levels=3, codebook_size=8, grad_mode=grad_mode,
        kmeans_iters=5, **overrides,
    )
    return RQVAE(config)


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_gradient_reaches_the_encoder_through_every_level(grad_mode):
    model = small_rqvae(grad_mode)
    model.train()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    model.initialize(x)
    levels = model.quantizer.forward_levels(model.encoder(x))
    encoder_params = list(model.encoder.parameters())
    for level, out in enumerate(levels):
        # a loss that sees only this level's codeword output
        weight = torch.randn(out.quantized.shape, generator=torch.Generator().manual_seed(level))
        grads = torch.autograd.grad((out.quantized * weight).sum(), encoder_params, retain_graph=True)
        norm = sum(float(g.norm()) for g in grads)
        assert norm > 1e-6, f"level {level + 1} passes no gradient to the encoder under {grad_mode}"


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_full_loss_trains_encoder_decoder_and_codebooks(grad_mode):
    model = small_rqvae(grad_mode)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    model.initialize(x)
    model(x).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.norm()) > 0, name


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_decode_codes_inverts_the_quantizer(grad_mode, distance):
    q = Quantizer(codebook_size=16, dim=4, distance=distance, grad_mode=grad_mode, kmeans_iters=5)
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    out = q(x)  # training mode: k-means initialisation on this batch
    assert torch.allclose(out.quantized, q.decode_codes(out.codes), atol=1e-5)
    q.eval()
    codes = torch.arange(16)
    assert torch.equal(q(q.decode_codes(codes)).codes, codes)  # codewords quantise to themselves


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_residual_decode_codes_matches_forward(grad_mode):
    rq = ResidualQuantizer(levels=3, codebook_size=[8, 8, 4], dim=5, grad_mode=grad_mode, kmeans_iters=5)
    x = torch.randn(3, 40, 5, generator=torch.Generator().manual_seed(0))  # any leading shape
    for training in (True, False):
        rq.train(training)
        out = rq(x)
        assert out.codes.shape == (3, 40, 3)
        assert torch.allclose(out.quantized, rq.decode_codes(out.codes), atol=1e-5)
    residual_error = (x - out.quantized).pow(2).sum(-1).mean()
    assert residual_error < x.pow(2).sum(-1).mean()


def test_rotation_trick_returns_the_codeword_and_rotates_the_gradient():
    g = torch.Generator().manual_seed(0)
    e, q = 3 * torch.randn(6, generator=g), torch.randn(6, generator=g)  # |q| < |e|: no cap
    assert torch.allclose(rotate_onto(e, q), q, atol=1e-6)
    jacobian = torch.autograd.functional.jacobian(lambda v: rotate_onto(v, q), e)  # (6, 6)
    scale = q.norm() / e.norm()
    # a scaled rotation: J Jᵀ = s² I, and it maps e onto q
    assert torch.allclose(jacobian @ jacobian.T, scale**2 * torch.eye(6), atol=1e-5)
    assert torch.allclose(jacobian @ e, q, atol=1e-5)


def test_rotation_trick_caps_the_rescaling_of_a_tiny_residual():
    g = torch.Generator().manual_seed(1)
    e, q = 1e-4 * torch.randn(6, generator=g), torch.randn(6, generator=g)  # |q| / |e| ~ 10⁴
    assert torch.allclose(rotate_onto(e, q), q)
    jacobian = torch.autograd.functional.jacobian(lambda v: rotate_onto(v, q), e)
    assert torch.allclose(jacobian @ jacobian.T, torch.eye(6), atol=1e-5)  # a pure rotation


def test_gumbel_temperature_anneals_with_training_steps():
    q = Quantizer(codebook_size=4, dim=2, grad_mode="gumbel", gumbel_temperature=(1.0, 0.1), anneal_steps=10)
    x = torch.randn(8, 2)
    assert q.temperature() == pytest.approx(1.0)
    for _ in range(10):
        q(x)
    assert q.temperature() == pytest.approx(0.1)
    q.eval()
    q(x)
    assert int(q.steps) == 10  # evaluation does not advance the schedule


def test_dead_codes_are_revived_from_the_batch():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 3, generator=g) * 5
    x = centres.repeat_interleave(16, 0) + 0.1 * torch.randn(128, 3, generator=g)
    q = Quantizer(codebook_size=8, dim=3, kmeans_init=False, dead_after=2)
    with torch.no_grad():
        q.codebook.fill_(100.0)  # every codeword far away: all points share whichever code wins
    assert q(x).codes.unique().numel() == 1
    for _ in range(4):
        out = q(x)
    assert out.codes.unique().numel() == 8


@pytest.mark.parametrize(
    "options, message",
    [
        ({"distance": "manhattan"}, "distance"),
        ({"grad_mode": "magic"}, "grad_mode"),
        ({"codebook_size": 1}, "codebook_size"),
        ({"gumbel_temperature": (1.0, 0.0)}, "gumbel_temperature"),
        ({"beta": -1.0}, "beta"),
    ],
)
def test_impossible_options_are_value_errors(options, message):
    kwargs = {"codebook_size": 8, "dim": 4, **options}
    with pytest.raises(ValueError, match=message):
        Quantizer(**kwargs)


def test_residual_quantizer_checks_its_options():
    with pytest.raises(ValueError, match="levels"):
        ResidualQuantizer(levels=0, codebook_size=8, dim=4)
    with pytest.raises(ValueError, match="sizes"):
        ResidualQuantizer(levels=3, codebook_size=[8, 8], dim=4)
    with pytest.raises(TypeError):
        Quantizer(8, 4)  # keyword-only


def test_initialisation_needs_enough_vectors():
    q = Quantizer(codebook_size=32, dim=4)
    with pytest.raises(ValueError, match="at least 32"):
        q(torch.randn(10, 4))
