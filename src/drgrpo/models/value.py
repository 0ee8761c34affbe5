"""The critic V_phi of PPO: a copy of the base policy's decoder trunk plus a scalar head.

    V_it = w . h_{P+t-1} + b         h: the trunk's last hidden state, P = response_start

V_it is the value of the state "prompt + the first t response tokens", read at the position whose
hidden state also predicts response token t (the column convention of `models/logprobs.py`:
log pi(y_t | prefix) comes from position P+t-1, so does V_it). The separate critic is the
PPO-RLHF default (Ouyang et al. 2022; Stiennon et al. 2020: the value model is initialised from
the reward/policy model, with its own parameters; TRL's PPOTrainer and verl's critic do the same).
The head is initialised to zero (V = 0 at the start, as TRL's `value_model` head after
`layer_init(std=0)`), so the first returns are the rewards themselves and no random value
offsets bias the first advantages.

The shared form (`ValueModel.on_policy`) is a head on the policy's own decoder (the same module,
not a copy): one trunk, two heads, as in the original PPO's shared-parameter networks and older
TRL versions (`AutoModelForCausalLMWithValueHead`).
"""

from __future__ import annotations

import copy

import torch

from drgrpo.models.logprobs import position_ids_from_mask


class ValueModel(torch.nn.Module):
    """`forward(input_ids (N, P+T), attention_mask (N, P+T), response_start=P)` -> values (N, T)
    in fp32, exactly 0 where attention_mask[:, P:] is 0 (padding)."""

    def __init__(self, trunk: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.trunk = trunk
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, policy: torch.nn.Module) -> ValueModel:
        """A separate critic: a deep copy of the policy's decoder (no LM head), a zero head."""
        trunk = copy.deepcopy(policy.get_decoder())
        trunk.requires_grad_(True)
        return cls(trunk, policy.config.hidden_size)

    @classmethod
    def on_policy(cls, policy: torch.nn.Module) -> ValueModel:
        """A head on the policy's decoder itself (shared trunk: the policy's parameters)."""
        return cls(policy.get_decoder(), policy.config.hidden_size)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int
    ) -> torch.Tensor:  # (N, T)
        p = response_start
        if not 0 < p < input_ids.shape[1]:
            raise ValueError(
                f"response_start={p} must leave at least one prompt and one response column "
                f"(input_ids is {tuple(input_ids.shape)})"
            )
        hidden = self.trunk(
            input_ids=input_ids,
            attention_mask=attention_mask.long(),
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state  # (N, P+T, h)
        # Position P+t-1 holds the prefix of response token t (logprobs.py's convention).
        values = self.head(hidden[:, p - 1 : -1]).squeeze(-1).float()  # (N, T)
        return torch.where(attention_mask[:, p:].bool(), values, 0.0)
