"""stdistill: Spatial-channel Token Distillation (Li et al., ICML 2022) for vision MLPs, on timm.

Importing the package registers its models with timm (`std_*` and `deit_*` for every supported
backbone, `cyclemlp_*`, `resmlp_b24_224` and the small students), so `timm.create_model` knows
them, exports included (`local-dir:`).
"""
from .models import backbones  # noqa: F401  (register the models with timm)
from .models import cyclemlp  # noqa: F401  (register the models with timm)
from .models import deit  # noqa: F401  (register the models with timm)
from .models.students import STDOutput, STDStudent, create_student

__version__ = '0.3.0'
__all__ = ['STDStudent', 'STDOutput', 'create_student', '__version__']
