"""Language models for every model type: embedding, N pre-norm blocks, final RMSNorm, LM head.

``XModel`` returns hidden states, ``XForCausalLM`` logits (and a loss with ``labels``). Inputs may
be padded (``attention_mask``, 1 = token): the valid tokens are packed into one stream with
``cu_seqlens`` before any mixer runs, so pads never enter a recurrence, a convolution or an
attention score; outputs at pads are zeros. One :class:`~qdelta.cache.QDeltaCache` serves every
model type; ``generate()`` from ``transformers`` works with it (transformers 5.x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from . import fused
from .blocks import Block
from .cache import QDeltaCache
from .configuration import DeltaNetConfig, GatedDeltaNetConfig, LinearAttentionConfig, QDeltaConfig, TransformerConfig
from .layers import RecurrentMixer, init_decay_parameters
from .norms import GatedRMSNorm, RMSNorm
from .packing import Packing
from .short_conv import ShortConvolution

try:  # transformers >= 5: init functions that respect already-loaded weights
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    from torch.nn import init


# transformers renamed the output field ``past_key_values`` to ``cache`` (5.2x); 5.17 reads the old
# name in generate(). The output carries the cache under the name this version reads, and both
# ``.cache`` and ``.past_key_values`` work on every version.
_CACHE_FIELD = "cache" if isinstance(getattr(ModelOutput, "past_key_values", None), property) else "past_key_values"

if _CACHE_FIELD == "cache":

    @dataclass
    class LMOutput(ModelOutput):
        loss: Optional[torch.FloatTensor] = None
        logits: Optional[torch.FloatTensor] = None
        last_hidden_state: Optional[torch.FloatTensor] = None
        cache: Optional[QDeltaCache] = None
        hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None

        @property
        def past_key_values(self):
            return self.cache
else:  # pragma: no cover - transformers < 5.2x

    @dataclass
    class LMOutput(ModelOutput):
        loss: Optional[torch.FloatTensor] = None
        logits: Optional[torch.FloatTensor] = None
        last_hidden_state: Optional[torch.FloatTensor] = None
        past_key_values: Optional[QDeltaCache] = None
        hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None

        @property
        def cache(self):
            return self.past_key_values


def _output(cache: Optional[QDeltaCache], **fields) -> LMOutput:
    """An :class:`LMOutput` with ``cache`` stored under this transformers version's field name."""
    return LMOutput(**fields, **{_CACHE_FIELD: cache})


class QDeltaPreTrainedModel(PreTrainedModel):
    config_class = QDeltaConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _is_stateful = True
    main_input_name = "input_ids"

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` plus ``auto_map`` and ``qdelta_remote.py`` (see
        :mod:`qdelta.remote_code`), so ``trust_remote_code=True`` loaders read the folder."""
        from .remote_code import auto_map, write_remote_module

        self.config.auto_map = auto_map(self.config.model_type)
        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_module(save_directory)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own QDeltaCache

    @torch.no_grad()
    def _init_weights(self, module):
        """flash-linear-attention's ``_init_weights`` (also the Q-Delta authors'): every Linear and
        short convolution (an ``nn.Conv1d`` in fla) N(0, initializer_range) with zero bias, embeddings
        N(0, initializer_range), norms ones, decay parameters by :func:`init_decay_parameters`; no
        rescaling of the residual projections (fla's default ``prenorm_residual_strategy=None``)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (RMSNorm, GatedRMSNorm)):
            init.ones_(module.weight)
        elif isinstance(module, ShortConvolution):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RecurrentMixer) and module.use_decay:
            A_log, dt_bias = (
                torch.empty_like(module.A_log, device="cpu"),
                torch.empty_like(module.dt_bias, device="cpu"),
            )
            init_decay_parameters(A_log, dt_bias, dt_min=self.config.dt_min, dt_max=self.config.dt_max)
            init.copy_(module.A_log, A_log.to(module.A_log.device))
            init.copy_(module.dt_bias, dt_bias.to(module.dt_bias.device))


class _BaseModel(QDeltaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def new_cache(self) -> QDeltaCache:
        linear = [self.config.model_type != "transformer"] * len(self.layers)
        return QDeltaCache(len(self.layers), linear)

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        past_key_values: Optional[QDeltaCache] = None,
        use_cache: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        cache: Optional[QDeltaCache] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> LMOutput:
        """input_ids (B, T) [or inputs_embeds (B, T, d)], attention_mask (B, T') with T' >= T (last T used)."""
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, T) and inputs_embeds (B, T, d)")
        h = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if h.dim() != 3:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(h.shape[:-1])}")
        B, T = h.shape[:2]
        if use_cache is None:
            use_cache = cache is not None
        if use_cache and cache is None:
            cache = self.new_cache()
        if cache is not None and not isinstance(cache, QDeltaCache):
            raise TypeError(f"past_key_values must be a qdelta.cache.QDeltaCache (or None), got {type(cache).__name__}")
        mask = None if attention_mask is None else attention_mask[:, -T:]
        past = None if cache is None else cache.past_tokens(B, h.device)
        packing = Packing.from_mask(mask, B, T, h.device, past)
        limit = self.config.max_sequence_length
        # no row is longer than the cache's width plus T (host numbers): the device is read only near the limit
        bound = T if cache is None else cache.seq_length + T
        if limit is not None and bound > limit:
            longest = T if packing.dense and cache is None else int((packing.past + packing.lengths).max())
            if longest > limit:
                raise ValueError(
                    f"sequence of {longest} tokens exceeds max_sequence_length={limit} of this "
                    f"{self.config.model_type} model"
                )
        x = packing.pack(h)
        states, hidden = [], []
        for i, block in enumerate(self.layers):
            if output_hidden_states:
                hidden.append(packing.unpack(x))
            x, state = block(x, packing, None if cache is None else cache.layers[i], use_cache)
            states.append(state)
        x = self.norm(x)
        if use_cache:
            cache.update(states, packing.lengths, T)
        out = packing.unpack(x)
        if output_hidden_states:
            hidden.append(out)
        return _output(
            cache if use_cache else None, last_hidden_state=out, hidden_states=tuple(hidden) if hidden else None
        )


class _BaseForCausalLM(QDeltaPreTrainedModel, GenerationMixin):
    model_class = _BaseModel

    def __init__(self, config):
        super().__init__(config)
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            raise ValueError(
                "config field 'tie_word_embeddings' must be false: the models of DESIGN §3 have an "
                "untied lm_head; set it to false in config.json"
            )
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        past_key_values: Optional[QDeltaCache] = None,
        use_cache: Optional[bool] = None,
        labels: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        cache: Optional[QDeltaCache] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        **kwargs,
    ) -> LMOutput:
        """Returns ``.logits`` (B, T, vocab) (zeros at pads), ``.past_key_values`` / ``.cache``, ``.loss``
        (mean next-token cross-entropy over labels != -100, when ``labels`` (B, T) is given).
        ``logits_to_keep`` as in transformers: n > 0 keeps the logits of the last n positions, a
        tensor the positions it indexes, 0 all; ``generate`` passes 1, so its prefill projects one
        position, not the whole prompt."""
        keep_all = isinstance(logits_to_keep, int) and logits_to_keep == 0
        if labels is not None and not keep_all:
            raise ValueError("pass either labels (the loss needs every position) or logits_to_keep, not both")
        out = self.model(
            input_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            cache=cache,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        if not keep_all:
            hidden = hidden[:, -logits_to_keep:] if isinstance(logits_to_keep, int) else hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None and fused.enabled(logits):
            loss = fused.cross_entropy(logits, labels)
        elif labels is not None:
            shifted = labels[:, 1:].to(logits.device)
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100
            )
        return _output(out.cache, loss=loss, logits=logits, hidden_states=out.hidden_states)

    def prepare_inputs_for_generation(
        self,
        input_ids,
        past_key_values=None,
        attention_mask=None,
        inputs_embeds=None,
        cache=None,
        use_cache=True,
        **kwargs,
    ):
        """Feed only the tokens the cache has not seen (works with transformers 5.17 and 5.24)."""
        cache = cache if cache is not None else past_key_values
        if cache is not None and cache.seq_length > 0:
            input_ids = input_ids[:, cache.seq_length :]
        return {
            "input_ids": input_ids.contiguous(),
            "attention_mask": attention_mask,
            "past_key_values": cache,
            "use_cache": use_cache,
            **({"logits_to_keep": kwargs["logits_to_keep"]} if "logits_to_keep" in kwargs else {}),
        }


class QDeltaModel(_BaseModel):
    config_class = QDeltaConfig


class QDeltaForCausalLM(_BaseForCausalLM):
    config_class = QDeltaConfig
    model_class = QDeltaModel


class GatedDeltaNetModel(_BaseModel):
    config_class = GatedDeltaNetConfig


class GatedDeltaNetForCausalLM(_BaseForCausalLM):
    config_class = GatedDeltaNetConfig
    model_class = GatedDeltaNetModel


class DeltaNetModel(_BaseModel):
    config_class = DeltaNetConfig


class DeltaNetForCausalLM(_BaseForCausalLM):
    config_class = DeltaNetConfig
    model_class = DeltaNetModel


class LinearAttentionModel(_BaseModel):
    config_class = LinearAttentionConfig


class LinearAttentionForCausalLM(_BaseForCausalLM):
    config_class = LinearAttentionConfig
    model_class = LinearAttentionModel


class TransformerModel(_BaseModel):
    config_class = TransformerConfig


class TransformerForCausalLM(_BaseForCausalLM):
    config_class = TransformerConfig
    model_class = TransformerModel


MODEL_CLASSES = {
    cls.config_class.model_type: (cls.model_class, cls)
    for cls in (
        QDeltaForCausalLM,
        GatedDeltaNetForCausalLM,
        DeltaNetForCausalLM,
        LinearAttentionForCausalLM,
        TransformerForCausalLM,
    )
}


def _register() -> None:
    """Every model type with transformers' AutoConfig / AutoModel / AutoModelForCausalLM."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    for model_type, (base, causal) in MODEL_CLASSES.items():
        AutoConfig.register(model_type, causal.config_class, exist_ok=True)
        AutoModel.register(causal.config_class, base, exist_ok=True)
        AutoModelForCausalLM.register(causal.config_class, causal, exist_ok=True)


_register()  # on import of the model classes, however they are reached (``import qdelta`` or a submodule)
