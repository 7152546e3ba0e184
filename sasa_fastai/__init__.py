__version__ = "0.1.0"
from .learner import get_learner
