import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # for _train_configs (pytest runs in importlib mode)
