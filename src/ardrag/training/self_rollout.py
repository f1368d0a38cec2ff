"""The student's training rollout (Self-Rollout) and its bounded-memory backward, in plain torch.

Per chunk m an exit step n_m is drawn; the rollout runs WITHOUT a graph (`iter_rollout` under no_grad with
`grad_steps=exit_steps`), keeping per chunk only the noisy state at n_m and the latents it wrote to the KV cache.
The generator's sample x is the exit x0-predictions of all chunks. A loss on x is evaluated on a detached leaf;
its gradient dL/dx is then pushed into the student's parameters by `backward_exit_predictions` (one chunk's graph
alive at a time, or one checkpointed teacher-forcing pass). Gradient rule: gradient reaches the student only
through the exit-step predictions; cached keys/values are constants unless `through_context` asks otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ardrag.sampling import ChunkResult, Denoiser, RolloutConfig, backward_exit_predictions, iter_rollout


def sample_exit_steps(n_chunks: int, n_steps: int, generator: torch.Generator | None = None) -> list[int]:
    """One exit step per chunk, uniform over the N denoising steps (the paper: 'for each frame m, sample a step n')."""
    return torch.randint(0, n_steps, (n_chunks,), generator=generator).tolist()


@dataclass
class StudentRollout:
    """A finished training rollout. x: (B, C, F, h, w) exit x0-predictions (detached); chunks: per-chunk records
    (`ChunkResult.cached` are the latents the KV cache received); exit_steps: n_m per chunk."""

    x: torch.Tensor
    chunks: list[ChunkResult]
    exit_steps: list[int]

    @property
    def clean(self) -> torch.Tensor:
        """(B, C, F, h, w): the frames the rollout produced (each chunk's output after its steps)."""
        return torch.cat([c.clean for c in self.chunks], dim=2)

    @property
    def cached(self) -> torch.Tensor:
        """(B, C, F, h, w): every latent written into the KV cache, in order."""
        return torch.cat([c.cached for c in self.chunks], dim=2)

    def backward(
        self,
        denoiser: Denoiser,
        grad: torch.Tensor,
        cfg: RolloutConfig,
        through_context: bool = False,
        backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    ) -> torch.Tensor:
        """Accumulate the parameter gradient of a loss whose gradient w.r.t. x is `grad` (see
        `backward_exit_predictions`). Returns the recomputed exit predictions (detached)."""
        return backward_exit_predictions(denoiser, self.chunks, grad, cfg, through_context, backward)


@torch.no_grad()
def student_rollout(
    denoiser: Denoiser,
    noise: torch.Tensor,
    cfg: RolloutConfig,
    exit_steps: list[int],
    generator: torch.Generator | None = None,
    ground_truth: torch.Tensor | None = None,
    finish: bool = False,
) -> StudentRollout:
    """Roll the student out from `noise` (B, C, F, h, w) with exit steps `exit_steps` (one per chunk), no graph.
    `finish`: `clean` holds every chunk after all N steps whatever the cache rule (see `iter_rollout`)."""
    chunks = list(
        iter_rollout(
            denoiser,
            noise,
            cfg,
            grad_steps=exit_steps,
            generator=generator,
            ground_truth=ground_truth,
            finish=finish,
        )
    )
    return StudentRollout(torch.cat([c.grad_x0 for c in chunks], dim=2), chunks, exit_steps)


def backward_loss_through_rollout(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    rollout: StudentRollout,
    denoiser: Denoiser,
    cfg: RolloutConfig,
    through_context: bool = False,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> torch.Tensor:
    """Evaluate `loss_fn(x)` on a detached copy of the rollout's x, then backpropagate into the student.

    Any loss of the generated sample works this way (DMD, adversarial): only dL/dx crosses from the loss to the
    rollout. Returns the loss (detached). Parameters that `loss_fn` itself touches (teacher, critic) get gradient
    only if they require it: freeze them (`frozen`) for the generator step.
    """
    x = rollout.x.detach().requires_grad_(True)
    loss = loss_fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    rollout.backward(denoiser, grad, cfg, through_context, backward)
    return loss.detach()
