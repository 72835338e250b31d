# Makes plugins/module_utils importable for controller-side plugins (action and callback).
import os
import sys

UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
if UTILS not in sys.path:
    sys.path.insert(0, UTILS)
