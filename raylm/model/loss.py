"""Next-token cross-entropy with the lm_head fused in, a chunk of positions at a time.

`F.cross_entropy(lm_head(x))` holds the logits of every position at once, in fp32, and their
gradient as large again: for GPT-2's 50k vocabulary and 16k tokens a step that is 6.6 GB, more than
the model. Here each chunk's logits live only while its loss and its gradients with respect to the
hidden states and the head's weight are computed, in the forward pass (the method of Liger
Kernel's fused linear cross-entropy, in plain torch); backward only scales what forward kept.
Same loss and gradients as the unfused form, to rounding.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # F.cross_entropy's default: positions not learned (prompts, padding)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows: int):
        rows = targets.numel()
        count = (targets != IGNORE_INDEX).sum().clamp(min=1)
        wants_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if wants_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk_rows):
            h, t = hidden[start : start + chunk_rows], targets[start : start + chunk_rows]
            logits = (h @ weight.t()).float()
            valid = t != IGNORE_INDEX
            safe = t.clamp(min=0)
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, safe[:, None]).squeeze(1)) * valid).sum()
            if wants_grad:  # d(sum of losses)/d logits = softmax - one-hot, on learned positions only
                grad = torch.exp(logits.sub_(lse[:, None]))
                grad[torch.arange(len(t), device=t.device), safe] -= 1.0
                grad *= valid[:, None]
                grad = grad.to(hidden.dtype)
                grad_hidden[start : start + chunk_rows] = grad @ weight
                grad_weight += (grad.t() @ h).float()
        if wants_grad:
            ctx.weight_dtype = weight.dtype
            ctx.save_for_backward(grad_hidden, grad_weight, count)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, count = ctx.saved_tensors
        scale = grad_loss / count
        return grad_hidden * scale.to(grad_hidden.dtype), (grad_weight * scale).to(ctx.weight_dtype), None, None


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 chunk_rows: int) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` ([N, D] x [V, D]) against `targets` [N], ignoring
    IGNORE_INDEX, computed `chunk_rows` positions at a time: the [N, V] logits never exist whole."""
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_rows)
