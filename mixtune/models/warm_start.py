"""`model.init_from`: copy matching tensors of a safetensors checkpoint into a config-built model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError
from mixtune.models.spec import source_path


def warm_start(model: Any, source: str) -> int:
    """Copy the tensors of a safetensors folder/file into `model` where names and shapes match.

    Names are compared without the model's base prefix (`model.base_model_prefix`, e.g. 'bert.').
    Returns the number of tensors copied; raises ConfigError when none matches.
    """
    import torch
    from safetensors.torch import load_file

    path = Path(source_path(source))
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no .safetensors weights at {str(path)!r}", field="model.init_from",
                          hint="give a save_pretrained folder, a .safetensors file or 'minilm'")
    prefix = f"{getattr(model, 'base_model_prefix', '')}."

    def key(name: str) -> str:
        return name[len(prefix):] if prefix != "." and name.startswith(prefix) else name

    state = model.state_dict()
    targets = {key(name): name for name in state}
    copied = 0
    with torch.no_grad():
        for file in files:
            for name, tensor in load_file(str(file)).items():
                target = targets.get(key(name))
                if target is not None and state[target].shape == tensor.shape:
                    state[target].copy_(tensor.to(state[target].dtype))
                    copied += 1
    if not copied:
        raise ConfigError(f"no tensor of {source!r} matches a parameter of the model by name and shape",
                          field="model.init_from",
                          hint="use weights of the same architecture and sizes as model.config")
    return copied
