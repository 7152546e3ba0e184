"""Stand-Alone Self-Attention (Ramachandran et al. 2019) for vision models: exact, memory-lean, fastai-native.

The main names are available from the package itself (`from sasa_fastai import get_learner, SASA2d`); they are imported
on first use, so that `import sasa_fastai` and the command lines' `--help` stay fast. Importing changes nothing outside
the package: no import hook, no warnings filter, no patch of another library (`nbs/18_ecosystem.ipynb` has the test)."""
__version__ = "0.2.0"
import importlib as _importlib

_NAMES = {'sasa_attention': 'attention', 'SASA2d': 'layers', 'SASAStem': 'layers', 'ResNet': 'models',
          'resnet26': 'models', 'resnet38': 'models', 'resnet50': 'models', 'resnet101': 'models',
          'sasa_resnet26': 'models', 'sasa_resnet38': 'models', 'sasa_resnet50': 'models', 'sasa_resnet101': 'models',
          'get_dls': 'data', 'get_learner': 'learner', 'save_weights': 'checkpoint', 'load_weights': 'checkpoint',
          'save_pretrained': 'checkpoint', 'from_pretrained': 'checkpoint', 'load_model': 'checkpoint',
          'attention_maps': 'visualize', 'show_attention_grid': 'visualize', 'predict': 'visualize',
          'SASALearner': 'learner', 'count_flops': 'flops', 'register': 'ecosystem'}
__all__ = list(_NAMES)

# fastai's `vision_learner` and timm's `create_model` know our models when those libraries were imported first;
# `register()` for any other order (see nbs/18_ecosystem.ipynb)
from .ecosystem import register_imported as _register_imported
_register_imported()

def __getattr__(name):
    if name not in _NAMES: raise AttributeError(f"module 'sasa_fastai' has no attribute {name!r}")
    _register_imported()  # (a library imported since)
    return getattr(_importlib.import_module(f'{__name__}.{_NAMES[name]}'), name)

def __dir__(): return sorted(list(globals()) + __all__)
