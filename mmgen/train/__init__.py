"""The torchtitan binding. The only package of mmgen that imports torchtitan.

Importing it applies the CPU compat layer first, because torchtitan fixes its
device type at import time.
"""

from mmgen.train import cpu_compat

cpu_compat.apply()
