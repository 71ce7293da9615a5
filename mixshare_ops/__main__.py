"""``python -m mixshare_ops``: says which backends this installation has."""

import json

import torch

import mixshare_ops
from mixshare_ops import _extension

info = mixshare_ops.backend_info()
# mixshare_ops/_C, or the library compiled on first use in torch's extension cache.
info["extension_library"] = _extension.library_path()
info["torch"] = torch.__version__
info["cuda_available"] = torch.cuda.is_available()
print(json.dumps(info, indent=2))
