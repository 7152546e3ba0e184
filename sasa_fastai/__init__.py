"""Stand-Alone Self-Attention (Ramachandran et al. 2019) for vision models: exact, memory-lean, fastai-native.

The main names are available from the package itself (`from sasa_fastai import get_learner, SASA2d`); they are imported
on first use, so that `import sasa_fastai` and the command lines' `--help` stay fast."""
__version__ = "0.2.0"
import importlib as _importlib
import warnings as _warnings

# fastai decorates some layers with `torch.jit.script`, which PyTorch deprecates with a FutureWarning on every import:
# nothing a user of sasa_fastai can act on.
_warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)

_NAMES = {'sasa_attention': 'attention', 'SASA2d': 'layers', 'SASAStem': 'layers', 'ResNet': 'models',
          'resnet26': 'models', 'resnet38': 'models', 'resnet50': 'models', 'resnet101': 'models',
          'sasa_resnet26': 'models', 'sasa_resnet38': 'models', 'sasa_resnet50': 'models', 'sasa_resnet101': 'models',
          'get_dls': 'data', 'get_learner': 'learner', 'save_weights': 'checkpoint', 'load_weights': 'checkpoint',
          'save_pretrained': 'checkpoint', 'from_pretrained': 'checkpoint',
          'attention_maps': 'visualize', 'count_flops': 'flops'}
__all__ = list(_NAMES)

# fastai's `vision_learner` and timm's `create_model` know our models as soon as those libraries are imported (neither
# is imported here: `import sasa_fastai` stays fast, and timm stays optional); see nbs/18_ecosystem.ipynb
from .ecosystem import when_imported as _when_imported, register_fastai as _register_fastai, register_timm as _register_timm
_when_imported('fastai.vision.learner', _register_fastai)
_when_imported('timm', _register_timm)

def __getattr__(name):
    if name not in _NAMES: raise AttributeError(f"module 'sasa_fastai' has no attribute {name!r}")
    return getattr(_importlib.import_module(f'{__name__}.{_NAMES[name]}'), name)

def __dir__(): return sorted(list(globals()) + __all__)
