"""The SVD residual of one weight: W = W_main (frozen) + U_res diag(S_res) V_res^T (trainable).

Effort tunes a pretrained weight only along its *trailing* singular directions: the top singular
triplets (what the backbone learnt) stay frozen in ``W_main``, the last ``k`` triplets become
trainable, initialised from their true values so that the model is unchanged at step 0.

The residual is attached with :mod:`torch.nn.utils.parametrize`: the module keeps its class, its
forward and (for ``nn.MultiheadAttention``) its fused fast path, which all read the parametrized
weight as an ordinary attribute. ``parametrizations.<name>.original`` holds ``W_main``; removing the
parametrization with ``leave_parametrized=True`` folds the residual back into a plain weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.errors import DetectorError


class EffortError(DetectorError, ValueError):
    """Effort cannot be applied: no target module, a rank out of range, a weight of the wrong shape."""


def trailing_svd(weight: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(U_main, V_main, U_res, S_res, V_res)`` of a 2-D ``weight`` (thin SVD, float64 on CPU/GPU,
    meta tensors pass through by shape). ``U_res``: d_out x k, ``S_res``: k, ``V_res``: d_in x k."""
    rank = min(weight.shape)
    if not 1 <= k <= rank:
        raise EffortError(f"residual rank k={k} must be in [1, {rank}] for a {tuple(weight.shape)} weight")
    if weight.device.type == "meta":
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    else:
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    v = vh.transpose(0, 1)
    r = rank - k
    return u[:, :r], v[:, :r], u[:, r:], s[r:], v[:, r:]


class SVDResidual(nn.Module):
    """The trainable trailing-``k`` singular triplets of one 2-D block (d_out x d_in).

    ``delta()`` is ``U_res diag(S_res) V_res^T``. With ``keep_basis`` the frozen principal bases
    ``U_main``/``V_main`` are kept (non-persistent buffers, rebuilt by the SVD) so the orthogonality
    loss can be computed; without it they are dropped to save memory.
    """

    def __init__(self, weight: Tensor, k: int = 1, keep_basis: bool = False):
        super().__init__()
        if weight.dim() != 2:
            raise EffortError(f"SVDResidual needs a 2-D weight, got shape {tuple(weight.shape)}")
        u_main, v_main, u_res, s_res, v_res = trailing_svd(weight, k)
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        self.shape = tuple(weight.shape)
        self.k = k
        self.U_res = nn.Parameter(u_res.to(dtype).contiguous())
        self.S_res = nn.Parameter(s_res.to(dtype).contiguous())
        self.V_res = nn.Parameter(v_res.to(dtype).contiguous())
        if keep_basis:
            self.register_buffer("U_main", u_main.to(dtype).contiguous(), persistent=False)
            self.register_buffer("V_main", v_main.to(dtype).contiguous(), persistent=False)
        else:
            self.register_buffer("U_main", None, persistent=False)
            self.register_buffer("V_main", None, persistent=False)
        # Frobenius energy of the initial residual, ||R0||^2 (see energy_gap).
        self.register_buffer("r0_energy", (s_res.double() ** 2).sum().to(torch.float32))

    def delta(self) -> Tensor:
        return (self.U_res * self.S_res) @ self.V_res.transpose(0, 1)

    def orthogonality(self) -> Tensor:
        """||[U_main|U_res]^T [U_main|U_res] - I||_F + the same for V, without the frozen
        ``U_main^T U_main - I`` block (constant, zero up to rounding): only the parts that depend on
        the trainable vectors, computed in O(d r k) instead of O(d^3)."""
        if self.U_main is None or self.V_main is None:
            raise RuntimeError(
                "orthogonality loss needs the principal bases: apply Effort with keep_basis=True"
            )
        total = self.U_res.new_zeros(())
        eye = torch.eye(self.k, dtype=self.U_res.dtype, device=self.U_res.device)
        for main, res in ((self.U_main, self.U_res), (self.V_main, self.V_res)):
            cross = main.transpose(0, 1) @ res
            gram = res.transpose(0, 1) @ res - eye
            total = total + torch.sqrt(2 * cross.pow(2).sum() + gram.pow(2).sum() + 1e-12)
        return total

    def energy_gap(self, w_main: Tensor) -> Tensor:
        """| ||W||_F^2 - ||W_orig||_F^2 | for W = W_main + R, W_orig = W_main + R0, computed as
        |2<W_main, R> + ||R||^2 - (2<W_main, R0> + ||R0||^2)| with <W_main, R0> = 0 (R0 lies in the
        trailing singular subspace, orthogonal to W_main), so no large numbers cancel."""
        weighted_u = self.U_res * self.S_res
        inner = (weighted_u * (w_main @ self.V_res)).sum()
        gram_u = weighted_u.transpose(0, 1) @ weighted_u
        gram_v = self.V_res.transpose(0, 1) @ self.V_res
        energy = (gram_u * gram_v).sum()
        return (2 * inner + energy - self.r0_energy.to(energy.dtype)).abs()


class EffortResidual(nn.Module):
    """Parametrization of a weight tensor: ``W = original + stack(block deltas)``.

    ``blocks`` splits the weight's rows (dim 0) into equal parts, each with its own SVD residual: 3 for
    packed q/k/v projections, 1 otherwise. A conv weight (out, in, kh, kw) is treated as the 2-D matrix
    (out, in * kh * kw); a 1x1 (pointwise) conv is exactly a linear map over channels.
    """

    def __init__(self, weight: Tensor, k: int = 1, blocks: int = 1, keep_basis: bool = False):
        super().__init__()
        matrix = weight.detach().reshape(weight.shape[0], -1)
        if matrix.shape[0] % blocks:
            raise EffortError(f"cannot split {matrix.shape[0]} rows into {blocks} equal blocks")
        self.weight_shape = tuple(weight.shape)
        self.parts = nn.ModuleList(
            SVDResidual(part, min(k, min(part.shape)), keep_basis) for part in matrix.chunk(blocks, dim=0)
        )

    def delta(self) -> Tensor:
        deltas = [part.delta() for part in self.parts]
        flat = deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=0)
        return flat.reshape(self.weight_shape)

    def forward(self, original: Tensor) -> Tensor:
        return original + self.delta().to(original.dtype)

    def right_inverse(self, weight: Tensor) -> Tensor:
        # Store W_main = W - R0, so the parametrized weight equals W at step 0 up to one rounding.
        return weight - self.delta().to(weight.dtype)

    def orthogonality(self) -> Tensor:
        return sum((part.orthogonality() for part in self.parts), self.parts[0].U_res.new_zeros(()))

    def energy_gap(self, original: Tensor) -> Tensor:
        matrix = original.reshape(original.shape[0], -1)
        pieces = matrix.chunk(len(self.parts), dim=0)
        return sum(
            (
                part.energy_gap(piece.to(part.U_res.dtype))
                for part, piece in zip(self.parts, pieces, strict=True)
            ),
            self.parts[0].U_res.new_zeros(()),
        )
