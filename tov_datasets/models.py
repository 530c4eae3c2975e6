"""Everything between tov and transformers/peft: the one room that touches their internals.

Holds: loading a model and its tokenizer (local directory, ``.gguf`` file or hub name; causal
LM or token-classification head; EOS as pad token), task inference, the label map and the one
pad-id rule; the default LoRA config and rank; adapter parameters, copies, saving and
loading, and their parameter-wise mean (`average_adapters`); attaching the trajectory's
adapters to a model and detaching them (`attached`; several targets get one val adapter
each, `val_adapter_name`); `adapter_mode`, the one context manager that activates adapters
and a train/eval mode and restores both; and `mixed_adapter_forward`, one forward over a batch
repeated once per adapter (peft mixed-adapter batches).

Ground floor: imports nothing from ``cli``, ``trajectory`` or ``demo``; raises ordinary
exceptions with clear messages (the CLI turns them into its one-line errors).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from tov_datasets import storage
from tov_datasets.formats import TASKS

__all__ = [
    "BASE_ADAPTER",
    "VAL_ADAPTER",
    "adapter_config",
    "adapter_mode",
    "adapter_names",
    "adapter_parameters",
    "attached",
    "average_adapters",
    "base_model",
    "check_adapter_names",
    "copy_adapter",
    "default_lora_config",
    "default_lora_rank",
    "decoder",
    "default_max_length",
    "forward_with_adapter_names",
    "infer_task",
    "is_peft_model",
    "label_map",
    "load_adapter",
    "load_adapters",
    "load_model",
    "linear_output_head",
    "load_tokenizer",
    "mixed_adapter_forward",
    "pad_token_id",
    "paired_adapter_parameters",
    "plain_copy",
    "quiet_progress_bars",
    "require_peft",
    "save_adapter",
    "seeded_rng",
    "val_adapter_name",
]

# The trajectory's two adapters (tov_select adds them to the user's model and removes them).
BASE_ADAPTER = "tov_base"
VAL_ADAPTER = "tov_val"
LORA_ALPHA = 32
LORA_DROPOUT = 0.2
# default_lora_rank: the largest power of two <= hidden_size / RANK_HIDDEN_RATIO, clamped to
# RANK_BOUNDS (hidden 4096 -> 256 as in the paper's 8B models; 576 -> 32; 384 -> 16).
RANK_HIDDEN_RATIO = 16
RANK_BOUNDS = (8, 256)
# Leaf names of the attention and MLP projections (Llama/Mistral/Qwen/Gemma, Phi-3,
# GPT-NeoX, GPT-2 and BERT-like encoders; "dense" is BERT's attention-output and MLP layers).
PROJECTION_NAMES = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    "qkv_proj", "gate_up_proj",
    "query_key_value", "dense_h_to_4h", "dense_4h_to_h",
    "c_attn", "c_proj", "c_fc",
    "query", "key", "value", "dense",
})

# Config attributes that change logits after the output projection (`linear_output_head`).
_LOGIT_POSTPROCESSING = ("logit_scale", "logits_scaling", "final_logit_softcapping")

PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------------ loading
def load_model(
    source: PathLike,
    dtype: str | torch.dtype | None = None,
    *,
    labels: Sequence[str] | None = None,
    default_task: str | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """A transformers model from a local directory, a ``.gguf`` file or a hub name, in eval
    mode (moved to ``device`` if given).

    The head: a token classifier if ``labels`` (NER tag strings) are given or the config's
    ``architectures`` name one, a causal LM if they name one, else ``default_task`` (None:
    ValueError). With ``labels`` the model does not know, a new classification head for
    them is initialised. Raises OSError/ValueError when it does not load.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

    location, extra = _source(source, trust_remote_code)
    config = AutoConfig.from_pretrained(location, **extra)
    kwargs: dict[str, Any] = {**extra, "dtype": dtype}
    task = _head_task(config, labels, default_task, source)
    if task == "token_classification":
        auto = AutoModelForTokenClassification
        known = set(getattr(config, "label2id", {}) or {})
        if labels is not None and not set(labels) <= known:
            kwargs.update(
                num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                ignore_mismatched_sizes=True,
            )
    else:
        auto = AutoModelForCausalLM
    model = auto.from_pretrained(location, **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval()


def _head_task(
    config: Any, labels: Sequence[str] | None, default_task: str | None, source: PathLike
) -> str:
    """The task whose head `load_model` builds (see there)."""
    architectures = getattr(config, "architectures", None) or []
    if labels is not None or any(a.endswith("ForTokenClassification") for a in architectures):
        return "token_classification"
    if any("CausalLM" in a or "LMHead" in a for a in architectures):
        return "causal_lm"
    if default_task is not None:
        return default_task
    raise ValueError(
        f"cannot tell which model class to load from {source}: its config names "
        f"architectures={config.architectures}; load the model yourself and pass it"
    )


def load_tokenizer(source: PathLike, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model directory, ``.gguf`` file or hub name; its EOS token becomes
    the pad token if it has none."""
    from transformers import AutoTokenizer

    source, extra = _source(source, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def plain_copy(model: nn.Module) -> nn.Module:
    """A plain transformers model with ``model``'s config (without its quantisation
    config) and weights: ``save_pretrained`` refuses a model loaded from a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    config = model.config
    config.__dict__.pop("quantization_config", None)
    auto = (AutoModelForTokenClassification if infer_task(model) == "token_classification"
            else AutoModelForCausalLM)
    copy_ = auto.from_config(config, dtype=next(model.parameters()).dtype)
    copy_.load_state_dict(model.state_dict())
    return copy_


def quiet_progress_bars() -> None:
    """No progress bars from transformers (e.g. while loading weights)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def adapter_config(model: nn.Module, adapter: str) -> dict[str, Any]:
    """The peft config of one adapter as a plain dict (``LoraConfig.to_dict()``)."""
    return model.peft_config[adapter].to_dict()


def _source(source: PathLike, trust_remote_code: bool) -> tuple[str, dict[str, Any]]:
    """(directory or hub name, extra ``from_pretrained`` keywords): a ``.gguf`` file is read
    from its directory with ``gguf_file``."""
    path = Path(source).expanduser()
    extra: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if path.suffix == ".gguf":
        return str(path.parent), {**extra, "gguf_file": path.name}
    return str(source), extra


# ------------------------------------------------------------------------ the model's facts
def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself when not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def infer_task(model: nn.Module) -> str:
    """``"causal_lm"`` or ``"token_classification"``, from the (peft-wrapped) model's class."""
    name = type(base_model(model)).__name__
    if "TokenClassification" in name:
        return "token_classification"
    if "CausalLM" in name or "LMHead" in name:
        return "causal_lm"
    raise ValueError(
        f"cannot tell the task of a {name}; tov supports causal LMs (*ForCausalLM) and token "
        "classifiers (*ForTokenClassification)"
    )


def label_map(model: nn.Module, task: str) -> Mapping[str, int] | None:
    """The model's label2id for token classification (what NER tag strings map to)."""
    return getattr(model.config, "label2id", None) if task == "token_classification" else None


def default_max_length(model: nn.Module) -> int | None:
    """The model's ``max_position_embeddings`` (None if its config has none)."""
    return getattr(base_model(model).config, "max_position_embeddings", None)


def linear_output_head(model: nn.Module) -> nn.Linear | None:
    """The causal LM's output projection when it is a plain ``nn.Linear`` whose output is
    the logits (no logit scaling or soft-capping in the config), else None."""
    inner = base_model(model)
    head = inner.get_output_embeddings()
    if type(head) is not nn.Linear or any(
        getattr(inner.config, a, None) not in (None, 1, 1.0) for a in _LOGIT_POSTPROCESSING
    ):
        return None
    return head


def decoder(model: nn.Module) -> nn.Module:
    """The module whose output is the final hidden states (the model without its head)."""
    inner = base_model(model)
    found = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    return found if found is not None else getattr(inner, inner.base_model_prefix)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (padded positions are never scored)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")


def _hidden_size(model: nn.Module) -> int:
    """The model's hidden size: its config's ``hidden_size`` (``n_embd`` / ``d_model``), else
    the width of its input embeddings."""
    inner = base_model(model)
    config = getattr(inner, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(inner.get_input_embeddings().embedding_dim)


# ------------------------------------------------------------------------ LoRA defaults
def default_lora_rank(model: nn.Module) -> int:
    """The LoRA rank used when none is given: the largest power of two <= hidden_size / 16,
    clamped to [8, 256] (hidden 4096 -> 256 as in the paper for 8B models, SmolLM2-135M's
    576 -> 32, MiniLM's 384 -> 16): the adapter grows with the model instead of rank 256
    giving a small model as many LoRA parameters as weights."""
    low, high = RANK_BOUNDS
    ratio = _hidden_size(model) // RANK_HIDDEN_RATIO
    rank = 1 << (ratio.bit_length() - 1) if ratio >= 1 else 1
    return min(max(rank, low), high)


def default_lora_config(
    task: str,
    rank: int | None = None,
    *,
    model: nn.Module | None = None,
    target_modules: Sequence[str] | str | None = None,
) -> Any:
    """The default LoRA config: alpha 32, dropout 0.2, rank ``rank`` (None:
    `default_lora_rank` of ``model``, which is then required), on the attention and MLP
    projections.

    Targets: ``target_modules`` if given; else the projections of ``model`` found by name
    (``PROJECTION_NAMES``); else peft's ``"all-linear"``. Token classifiers also train their
    classification head (peft's TOKEN_CLS task adds it to ``modules_to_save``).
    """
    from peft import LoraConfig

    if task not in TASKS:
        raise ValueError(f"task={task!r} is not supported; expected one of {TASKS}")
    if rank is None and model is None:
        raise ValueError("pass rank= or model= (the default rank scales with the model)")
    if target_modules is None and model is not None:
        names = {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        }
        target_modules = sorted(names & PROJECTION_NAMES) or None
    return LoraConfig(
        r=rank if rank is not None else default_lora_rank(model),
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        target_modules=list(target_modules) if target_modules is not None else "all-linear",
        task_type="CAUSAL_LM" if task == "causal_lm" else "TOKEN_CLS",
    )


# ------------------------------------------------------------------------ adapter parameters
def require_peft(model: nn.Module) -> None:
    """Raise ValueError unless ``model`` is a peft model (training needs an adapter)."""
    if not hasattr(model, "peft_config"):
        raise ValueError(
            "training needs a peft model holding a LoRA adapter; wrap yours with "
            "peft.get_peft_model(model, default_lora_config(task, model=model))"
        )


def adapter_names(model: nn.Module) -> list[str]:
    """The names of a peft model's adapters, sorted (empty for a plain model)."""
    return sorted(getattr(model, "peft_config", {}))


def _check_adapters(model: nn.Module, adapters: Sequence[str]) -> None:
    require_peft(model)
    for adapter in adapters:
        if adapter not in model.peft_config:
            raise ValueError(
                f"the model has no adapter {adapter!r}; it has {adapter_names(model)}"
            )


def _adapter_containers(model: nn.Module) -> Iterator[Any]:
    """The per-adapter containers (ModuleDict/ParameterDict) of peft's tuner layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for module in model.modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            for layer_name in module.adapter_layer_names:
                try:
                    yield functools.reduce(getattr, layer_name.split("."), module)
                except AttributeError:
                    continue


def _members(item: Any) -> list[nn.Parameter]:
    return [item] if isinstance(item, nn.Parameter) else list(item.parameters())


def adapter_parameters(model: nn.Module, adapter: str) -> list[nn.Parameter]:
    """The parameters of one adapter (LoRA factors, modules_to_save copies), in model order."""
    params, seen = [], set()
    for container in _adapter_containers(model):
        if adapter in container:
            for p in _members(container[adapter]):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    if not params:
        raise ValueError(f"the model has no adapter {adapter!r}")
    return params


def paired_adapter_parameters(
    model: nn.Module, src: str, dst: str
) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(parameter of ``src``, the same parameter of ``dst``) for two adapters of one config,
    in model order: the same module and role (e.g. ``...q_proj.lora_A.<src>.weight`` and
    ``...q_proj.lora_A.<dst>.weight``). Raises ValueError if their layouts differ."""
    pairs = []
    for container in _adapter_containers(model):
        if src not in container and dst not in container:
            continue
        if src not in container or dst not in container:
            raise ValueError(
                f"adapters {src!r} and {dst!r} target different modules; create "
                f"{dst!r} with the config of {src!r}"
            )
        for p, q in zip(_members(container[src]), _members(container[dst]), strict=True):
            if p.shape != q.shape:
                raise ValueError(
                    f"adapters {src!r} and {dst!r} differ in shape ({tuple(p.shape)} vs "
                    f"{tuple(q.shape)}); create {dst!r} with the config of {src!r}"
                )
            pairs.append((p, q))
    return pairs


def copy_adapter(model: nn.Module, src: str, dst: str) -> None:
    """Copy the weights of adapter ``src`` into adapter ``dst`` in place (same config).

    The parameter objects of ``dst`` are kept, so an optimizer over them stays valid.
    """
    with torch.no_grad():
        for p, q in paired_adapter_parameters(model, src, dst):
            q.copy_(p)


def average_adapters(model: nn.Module, sources: Sequence[str], dst: str) -> None:
    """Set adapter ``dst`` to the parameter-wise mean of the adapters ``sources`` (same
    config), in place: each LoRA factor and modules_to_save copy is averaged on its own,
    summed in float64 in the order of ``sources``. One source is exactly `copy_adapter`.
    The parameter objects of ``dst`` are kept, so an optimizer over them stays valid."""
    if not sources:
        raise ValueError("average_adapters: give at least one source adapter")
    if len(sources) == 1:
        copy_adapter(model, sources[0], dst)
        return
    paired = [paired_adapter_parameters(model, src, dst) for src in sources]
    with torch.no_grad():
        for pairs in zip(*paired, strict=True):
            total = pairs[0][0].to(torch.float64)
            for p, _ in pairs[1:]:
                total = total + p.to(torch.float64)
            pairs[0][1].copy_(total / len(sources))


def save_adapter(model: nn.Module, adapter: str, path: PathLike) -> Path:
    """Save one adapter of a peft model to the directory ``path`` (safetensors + config),
    atomically. The result loads with ``PeftModel.from_pretrained(base_model, path)``."""

    def build(tmp: Path) -> Path:
        model.save_pretrained(tmp, selected_adapters=[adapter], safe_serialization=True)
        return tmp / adapter if adapter != "default" else tmp

    return storage.atomic_write_dir(path, build)


def load_adapter(model: nn.Module, adapter: str, path: PathLike) -> None:
    """Load weights saved by :func:`save_adapter` into the existing adapter ``adapter``."""
    from peft import set_peft_model_state_dict

    state = load_file(str(Path(path) / storage.ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(model, state, adapter_name=adapter)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{path} does not fit adapter {adapter!r}: unexpected {unexpected[:5]}")


def load_adapters(model: nn.Module, directories: Mapping[str, PathLike]) -> nn.Module:
    """A plain model wrapped in place as a peft model holding the adapters saved in
    ``directories`` ({adapter name: directory}), in eval mode."""
    from peft import PeftModel

    if not all(os.path.isdir(d) for d in directories.values()):
        raise ValueError(
            f"{type(model).__name__} is not a peft model; pass a PeftModel holding both "
            f"adapters, or base_adapter/val_adapter as adapter directories (got "
            f"{list(directories.values())})"
        )
    (first, first_dir), *rest = directories.items()
    peft_model = PeftModel.from_pretrained(model, first_dir, adapter_name=first)
    for name, directory in rest:
        peft_model.load_adapter(directory, adapter_name=name)
    return peft_model.eval()


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a peft model (holds adapters)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


# ------------------------------------------------------------------------ using adapters
@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG (dropout, LoRA initialisation) for the block, leaving the caller's
    RNG state untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def adapter_mode(
    model: nn.Module, adapters: str | Sequence[str] | None = None, *, train: bool
) -> Iterator[str | None]:
    """Activate ``adapters`` in train or eval mode for the block; yields the active one.

    ``adapters``: one name (made active), a list (checked to exist, for a mixed-adapter
    batch that names each row's adapter; the active adapter stays), or None (the active one
    stays; a plain model works in eval mode). In train mode only the parameters of the
    named adapters (None: the active one) require grad. Every module's mode, the active
    adapter and the requires_grad flags are restored on exit.
    """
    names = [adapters] if isinstance(adapters, str) else list(adapters or [])
    modes = [(m, m.training) for m in model.modules()]
    previous = getattr(model, "active_adapter", None)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if names:
            _check_adapters(model, names)
        if isinstance(adapters, str):
            model.set_adapter(adapters)
        active = adapters if isinstance(adapters, str) else previous
        if train:
            require_peft(model)
            trainable = {id(p) for name in names or [active] for p in
                         adapter_parameters(model, name)}
            for p in model.parameters():
                p.requires_grad_(id(p) in trainable)
        model.train(train)
        yield active
    finally:
        if previous is not None and model.active_adapter != previous:
            model.set_adapter(previous)
        for p, flag in flags:
            p.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


def check_adapter_names(adapter_names: Sequence[str], rows: int) -> None:
    """peft leaves its hooks registered (breaking every later forward) when ``adapter_names``
    does not match the batch size: check it before calling the model."""
    if len(adapter_names) != rows:
        raise ValueError(
            f"adapter_names has {len(adapter_names)} entries for a batch of {rows} rows"
        )


def mixed_adapter_forward(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], adapters: Sequence[str],
    **options: Any,
) -> Any:
    """ONE forward over the B-row batch ``inputs`` repeated once per adapter: rows
    [i * B, (i + 1) * B) run with ``adapters[i]`` (peft mixed-adapter batch; eval mode).
    ``options``: other keywords of the model's forward (e.g. ``use_cache``)."""
    rows = next(iter(inputs.values())).shape[0]
    repeated = {key: value.repeat(len(adapters), 1) for key, value in inputs.items()}
    names = [adapter for adapter in adapters for _ in range(rows)]
    return forward_with_adapter_names(model, {**repeated, **options}, names)


def forward_with_adapter_names(
    model: nn.Module, inputs: Mapping[str, Any], adapter_names: Sequence[str]
) -> Any:
    """``model(**inputs, adapter_names=...)``, its length checked first (peft's hook bug)."""
    check_adapter_names(adapter_names, inputs["input_ids"].shape[0])
    return model(**inputs, adapter_names=list(adapter_names))


# ------------------------------------------------------------------------ attaching
def val_adapter_name(target: str) -> str:
    """The trajectory's val adapter of the named target ``target`` (several targets):
    ``tov_val_<target>``."""
    return f"{VAL_ADAPTER}_{target}"



def _original(module: nn.Module) -> nn.Module:
    """The module peft wrapped (the module itself when not a peft wrapper)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    if isinstance(module, BaseTunerLayer):
        return module.get_base_layer()
    if isinstance(module, AuxiliaryTrainingWrapper):
        return module.original_module
    return module


def _strip_peft(module: nn.Module) -> None:
    """Put back the modules peft wrapped, recursively (the inverse of get_peft_model).

    Not peft's ``unload()``: for a ``modules_to_save`` wrapper (a token classifier's head)
    ``unload()`` swaps in the TRAINED copy of the active adapter, so the user's model would
    come back with the trajectory's head; this puts back the original module untouched.
    """
    for name, child in list(module.named_children()):
        original = _original(child)
        if original is not child:
            setattr(module, name, original)
        _strip_peft(original)


@contextlib.contextmanager
def attached(
    model: nn.Module, adapters: Sequence[str] = (BASE_ADAPTER, VAL_ADAPTER), *,
    lora: Any = None, seed: int = 0,
) -> Iterator[nn.Module]:
    """The model as a peft model holding the new ``adapters`` (the first one is the
    starting point).

    A plain model is wrapped with ``lora`` (default: `default_lora_config` of its task;
    fresh LoRA weights drawn from ``seed``); a peft model gets the new adapters with the
    config of its active adapter, the first a copy of its weights. On exit the user's model
    is as it was: the new adapters (or all LoRA layers) removed, requires_grad flags, mode
    and active adapter restored.
    """
    from peft import PeftModel, get_peft_model

    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    device = next(model.parameters()).device
    if isinstance(model, PeftModel):
        if lora is not None:
            raise ValueError(
                "lora= applies to plain models only; a peft model starts from its active "
                "adapter and its config"
            )
        start = model.active_adapter
        clash = set(adapters) & set(model.peft_config)
        if clash:
            raise ValueError(f"the model already has adapters {sorted(clash)}; remove them")
        config = model.peft_config[start]
        with seeded_rng(seed, device):
            for name in adapters:
                model.add_adapter(name, copy.deepcopy(config))
        copy_adapter(model, start, adapters[0])
        peft_model = model
    else:
        config = lora or default_lora_config(infer_task(model), model=model)
        inner_dict = set(vars(model))
        with seeded_rng(seed, device):
            peft_model = get_peft_model(model, copy.deepcopy(config), adapter_name=adapters[0])
            for name in adapters[1:]:
                peft_model.add_adapter(name, copy.deepcopy(config))
    try:
        yield peft_model
    finally:
        if peft_model is model:
            model.set_adapter(start)
            for name in adapters:
                model.delete_adapter(name)
        else:
            _strip_peft(model)
            for key in set(vars(model)) - inner_dict:  # e.g. the peft_config peft attaches
                delattr(model, key)
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
