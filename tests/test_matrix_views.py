"""What "the matrix" of a parameter is: recurrent gates split by name, non-matrix parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_critical.spectral import RNN_GATES, find_weight_matrices, matrix_views


def test_lstm_gates_are_split_per_layer_direction_and_kind_in_pytorch_order():
    lstm = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    found = find_weight_matrices(lstm)
    hidden = 5
    expected = {}
    for layer in range(2):
        for suffix in ("", "_reverse"):
            for kind in ("ih", "hh"):
                name = f"weight_{kind}_l{layer}{suffix}"
                w = getattr(lstm, name)
                for g, gate in enumerate("ifgo"):  # torch.nn.LSTM docs: W_ii|W_if|W_ig|W_io
                    expected[f"{name}.{gate}"] = w[g * hidden : (g + 1) * hidden]
    assert sorted(found) == sorted(expected)
    for key, mat in expected.items():
        assert torch.equal(found[key], mat)
        assert found[key].data_ptr() == mat.data_ptr()  # a view, no copy
    assert "weight_ih_l0.i" in found and RNN_GATES["lstm"] == ("i", "f", "g", "o")


def test_named_gates_reproduce_the_lstm_and_gru_steps():
    # The names mean what they say: one step computed from the named gate matrices equals torch's.
    torch.manual_seed(0)
    x, h, c = torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 5)
    lstm = nn.LSTM(3, 5, bias=False)
    m = find_weight_matrices(lstm)

    def pre(gate: str) -> torch.Tensor:
        return x @ m[f"weight_ih_l0.{gate}"].T + h @ m[f"weight_hh_l0.{gate}"].T

    i, f, g, o = torch.sigmoid(pre("i")), torch.sigmoid(pre("f")), torch.tanh(pre("g")), torch.sigmoid(pre("o"))
    c_new = f * c + i * g
    _, (h_torch, c_torch) = lstm(x[None], (h[None], c[None]))
    assert torch.allclose(c_torch[0], c_new, atol=1e-6)
    assert torch.allclose(h_torch[0], o * torch.tanh(c_new), atol=1e-6)

    gru = nn.GRU(3, 5, bias=False)
    m = find_weight_matrices(gru)
    r = torch.sigmoid(x @ m["weight_ih_l0.r"].T + h @ m["weight_hh_l0.r"].T)
    z = torch.sigmoid(x @ m["weight_ih_l0.z"].T + h @ m["weight_hh_l0.z"].T)
    n = torch.tanh(x @ m["weight_ih_l0.n"].T + r * (h @ m["weight_hh_l0.n"].T))
    _, h_torch = gru(x[None], h[None])
    assert torch.allclose(h_torch[0], (1 - z) * n + z * h, atol=1e-6)


def test_cells_rnn_and_lstm_projection():
    net = nn.ModuleDict(dict(
        lc=nn.LSTMCell(3, 4), gc=nn.GRUCell(3, 4), rnn=nn.RNN(3, 4, num_layers=2), proj=nn.LSTM(3, 6, proj_size=2),
    ))
    shapes = {k: tuple(v.shape) for k, v in find_weight_matrices(net).items()}
    assert {k for k in shapes if k.startswith("lc.")} == {f"lc.weight_{k}.{g}" for k in ("ih", "hh") for g in "ifgo"}
    assert {k for k in shapes if k.startswith("gc.")} == {f"gc.weight_{k}.{g}" for k in ("ih", "hh") for g in "rzn"}
    # nn.RNN has a single gate: used as is
    assert {k: v for k, v in shapes.items() if k.startswith("rnn.")} == {
        "rnn.weight_ih_l0": (4, 3), "rnn.weight_hh_l0": (4, 4), "rnn.weight_ih_l1": (4, 4), "rnn.weight_hh_l1": (4, 4)}
    # the LSTM projection is one matrix; the gates see the projected state (hh: 6 x 2 per gate)
    assert shapes["proj.weight_hr_l0"] == (2, 6)
    assert shapes["proj.weight_hh_l0.f"] == (6, 2) and shapes["proj.weight_ih_l0.o"] == (6, 3)
    # include / exclude match the parameter name too, so one pattern selects every gate
    assert list(find_weight_matrices(net, include="lc.weight_ih")) == [f"lc.weight_ih.{g}" for g in "ifgo"]
    assert not any(k.startswith("gc.") for k in find_weight_matrices(net, exclude="gc.*"))


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 16, 32))  # a ViT-style positional embedding
        self.cls = nn.Parameter(torch.randn(1, 1, 32))  # a class token: a vector
        self.scale = nn.Parameter(torch.ones(32))  # 1-D
        self.temperature = nn.Parameter(torch.tensor(1.0))  # 0-D
        self.kernel = nn.Parameter(torch.randn(4, 3, 3, 3))  # a custom conv kernel used with F.conv2d
        self.stack = nn.Parameter(torch.randn(1, 2, 5, 6))  # leading 1 dropped, then read like a kernel
        self.conv = nn.Conv2d(3, 1, 3)  # one output channel: still (1, 27), never squeezed
        self.head = nn.Linear(32, 1)  # a 1 x 32 matrix is a matrix


def test_non_matrix_parameters_follow_the_documented_rule():
    odd = Odd()
    found = find_weight_matrices(odd)
    assert {k: tuple(v.shape) for k, v in found.items()} == {
        "pos": (16, 32), "kernel": (4, 27), "stack": (2, 30), "conv.weight": (1, 27), "head.weight": (1, 32),
    }
    assert torch.equal(found["pos"], odd.pos[0])
    assert found["pos"].data_ptr() == odd.pos.data_ptr()
    assert matrix_views("cls", odd.cls) == {} and matrix_views("scale", odd.scale) == {}


@pytest.mark.parametrize("module", [nn.LSTM(2, 3), nn.GRU(2, 3)])
def test_biases_of_recurrent_layers_are_not_matrices(module):
    assert not any("bias" in k for k in find_weight_matrices(module))
