"""stdistill: Spatial-channel Token Distillation (Li et al., ICML 2022) for vision MLPs, on timm.

Importing the package registers its models with timm (`std_*`, `deit_*`, `cyclemlp_*`,
`resmlp_b24_224`), so `timm.create_model` knows them.
"""
from . import backbones, cyclemlp, deit  # noqa: F401  (register the models with timm)
from .students import STDOutput, STDStudent, create_student

__version__ = '0.1.0'
__all__ = ['STDStudent', 'STDOutput', 'create_student', '__version__']
